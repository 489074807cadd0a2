//! OpenAPI schemas that the derive cannot state: the rules of
//! [`validate_name`](crate::validate_name) on the items of a list and the
//! keys of a map, so the document says what the server enforces.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

/// A name: 1 to 100 letters, digits and `. _ : / -`.
fn name() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .min_length(Some(1))
        .max_length(Some(100))
        .pattern(Some("^[A-Za-z0-9._:/-]+$"))
}

/// An agent's queues: 1 to 50 names.
pub(crate) fn queues() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(name())
        .min_items(Some(1))
        .max_items(Some(50))
        .description(Some("Queues it pulls from: 1 to 50 names"))
}

/// An agent's labels: at most 50, keys as names, values up to 200
/// characters.
pub(crate) fn labels() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .property_names(Some(name()))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .max_length(Some(200)),
        ))
        .max_properties(Some(50))
        .description(Some(
            "Free-form labels: at most 50; keys as names, values up to 200 characters",
        ))
}

/// Where a limit's keys come from: `job`, `tenant` or a JSON pointer.
pub(crate) fn key_source() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some("^(job|tenant|/.*)$"))
        .max_length(Some(200))
        .default(Some(serde_json::json!("job")))
        .description(Some(
            "Where a job's key comes from: `job` (named at enqueue), `tenant`, or a JSON pointer into the payload (`/customer`)",
        ))
}
