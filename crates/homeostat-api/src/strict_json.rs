//! What a request's JSON may be. serde_json alone lets a struct be read from
//! an array of its fields in order (`[]` is a struct whose fields are all
//! optional), keeps the last of duplicate keys, and hands PostgreSQL strings
//! with NUL characters that it cannot store. A body is read here once into a
//! value that refuses duplicate keys and notes NULs, then into its type
//! through a deserializer that takes a struct from an object alone.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// What becomes of a NUL character (U+0000) in a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nul {
    /// Refused: 422 naming the field (what a client chose to send).
    Refuse,
    /// Replaced by U+FFFD (what an agent reports of a job: its error text
    /// and results are never lost for a character).
    Replace,
}

/// Reads a request body as `T`: 400 for syntax, duplicate keys, an array
/// where an object belongs, unknown fields and wrong types; 422 for a NUL
/// under [`Nul::Refuse`].
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8], nul: Nul) -> Result<T, ApiError> {
    let value = parse(bytes, nul)?;
    from_value(&value)
}

/// The body as a JSON value, under the same rules.
pub(crate) fn parse(bytes: &[u8], nul: Nul) -> Result<Value, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut seen_nul = false;
    let value = ValueSeed {
        nul,
        seen_nul: &mut seen_nul,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| ApiError::malformed(bounded(format!("the body is not valid JSON: {e}"))))?;
    if seen_nul {
        let at = nul_path(&value, &mut String::new()).unwrap_or_default();
        return Err(ApiError::invalid(format!(
            "{at}: contains a NUL character (U+0000), which cannot be stored"
        )));
    }
    Ok(value)
}

/// `T` from a value read by [`parse`].
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    T::deserialize(Strict(value))
        .map_err(|e| ApiError::malformed(bounded(format!("the body does not parse: {e}"))))
}

/// The most characters of a refusal's message: serde's messages quote the
/// value they refuse (`unknown variant `…``), whole.
const MESSAGE_CHARS: usize = 300;

/// `message` cut to [`MESSAGE_CHARS`] characters, so that a refusal does
/// not echo a body's worth of its input back.
fn bounded(message: String) -> String {
    match homeostat_model::clipped(&message, MESSAGE_CHARS) {
        Some(head) => format!("{head}…"),
        None => message,
    }
}

/// Where the first NUL is, as `field.list[2].field` (`body` for the top).
fn nul_path(value: &Value, at: &mut String) -> Option<String> {
    fn here(at: &str) -> String {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.to_owned()
        }
    }
    match value {
        Value::String(s) if s.contains('\0') => Some(here(at)),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| {
            let len = at.len();
            at.push_str(&format!("[{i}]"));
            let found = nul_path(v, at);
            at.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(here(at));
            }
            let len = at.len();
            if !at.is_empty() {
                at.push('.');
            }
            at.push_str(k);
            let found = nul_path(v, at);
            at.truncate(len);
            found
        }),
        _ => None,
    }
}

/// Builds a [`Value`], refusing duplicate keys and noting (or replacing)
/// NULs.
struct ValueSeed<'a> {
    nul: Nul,
    seen_nul: &'a mut bool,
}

impl ValueSeed<'_> {
    fn string(&mut self, s: &str) -> Value {
        if s.contains('\0') {
            if self.nul == Nul::Replace {
                return Value::String(s.replace('\0', "\u{fffd}"));
            }
            *self.seen_nul = true;
        }
        Value::String(s.to_owned())
    }

    fn reborrow(&mut self) -> ValueSeed<'_> {
        ValueSeed {
            nul: self.nul,
            seen_nul: self.seen_nul,
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(mut self, v: &str) -> Result<Value, E> {
        Ok(self.string(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(self.reborrow())? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let key = match self.string(&key) {
                Value::String(k) => k,
                _ => key,
            };
            let value = map.next_value_seed(self.reborrow())?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A deserializer over a [`Value`] that reads a struct from an object only.
/// Everything else is as serde_json's own.
#[derive(Clone, Copy)]
struct Strict<'a>(&'a Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for Strict<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// An integer field takes an integral number however it is written: JSON
/// does not tell 3 from 3.0, and neither does JSON Schema. (A payload keeps
/// what was sent: only fields typed as integers are read this way.)
macro_rules! integers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            match self.0.as_f64() {
                // Integral and within ±2^53: the conversions are exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Some(v) if self.0.is_f64() && v.fract() == 0.0 && v.abs() <= EXACT => {
                    if v < 0.0 {
                        visitor.visit_i64(v as i64)
                    } else {
                        visitor.visit_u64(v as u64)
                    }
                }
                _ => self.deserialize_any(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Strict));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(map) => self.object(map, visitor),
            // Scalars carry no structs: serde_json's own rules.
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => self.object(map, visitor),
            other => Err(de::Error::custom(format_args!(
                "expected an object for {name}, found {}",
                kind(other)
            ))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            // A unit variant by name; a variant with data is a one-key
            // object whose value is read strictly.
            Value::String(_) => self.0.deserialize_enum(name, variants, visitor),
            Value::Object(map) if map.len() == 1 => {
                let (variant, value) = map.iter().next().expect("one key");
                visitor.visit_enum(Variant {
                    variant,
                    value: Strict(value),
                })
            }
            other => Err(de::Error::custom(format_args!(
                "expected a string or a one-key object for {name}, found {}",
                kind(other)
            ))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    integers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
    }

    serde::forward_to_deserialize_any! {
        bool i128 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

impl<'de> Strict<'de> {
    fn object<V: Visitor<'de>>(
        self,
        map: &'de Map<String, Value>,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        let mut access = MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Strict(v))));
        let out = visitor.visit_map(&mut access)?;
        access.end()?;
        Ok(out)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Variant<'a> {
    variant: &'a str,
    value: Strict<'a>,
}

impl<'de> de::EnumAccess<'de> for Variant<'de> {
    type Error = serde_json::Error;
    type Variant = Strict<'de>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Strict<'de>), serde_json::Error> {
        let name = seed.deserialize(self.variant.into_deserializer())?;
        Ok((name, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for Strict<'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), serde_json::Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, serde_json::Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        self.deserialize_any(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        self.deserialize_struct("variant", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        name: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        uses: Option<u32>,
        #[serde(default)]
        inner: Vec<Inner>,
        payload: Option<Value>,
    }

    fn read(json: &str) -> Result<Outer, ApiError> {
        from_slice(json.as_bytes(), Nul::Refuse)
    }

    #[test]
    fn objects_read_as_serde_json_reads_them() {
        let got =
            read(r#"{"uses": 3, "inner": [{"name": "a"}], "payload": [1, {"x": null}]}"#).unwrap();
        assert_eq!(got.uses, Some(3));
        assert_eq!(got.inner, vec![Inner { name: "a".into() }]);
        assert_eq!(got.payload, Some(serde_json::json!([1, {"x": null}])));
    }

    #[test]
    fn a_refusal_does_not_echo_a_long_value_whole() {
        #[derive(Debug, Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Colour {
            Red,
        }
        let long = "x".repeat(100_000);
        let err = from_slice::<Colour>(format!("{long:?}").as_bytes(), Nul::Refuse).unwrap_err();
        assert_eq!(err.code, homeostat_model::ErrorCode::Malformed);
        assert!(
            err.message
                .starts_with("the body does not parse: unknown variant")
        );
        assert_eq!(
            err.message.chars().count(),
            MESSAGE_CHARS + 1,
            "cut, with …"
        );
        let err = from_slice::<Outer>(format!("{{\"uses\": {long:?}").as_bytes(), Nul::Refuse)
            .unwrap_err();
        assert!(err.message.chars().count() <= MESSAGE_CHARS + 1);
    }

    #[test]
    fn an_array_is_not_a_struct_at_any_depth() {
        for body in [r#"[]"#, r#"[3]"#, r#"{"inner": [["a"]]}"#] {
            let err = read(body).unwrap_err();
            assert_eq!(err.code, homeostat_model::ErrorCode::Malformed, "{body}");
            assert!(
                err.message.contains("expected an object"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for body in [
            r#"{"uses": 1, "uses": 2}"#,
            r#"{"payload": {"a": 1, "a": 2}}"#,
        ] {
            let err = read(body).unwrap_err();
            assert!(
                err.message.contains("duplicate key \"a\"")
                    || err.message.contains("duplicate key \"uses\""),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn a_nul_is_refused_naming_where_or_replaced() {
        let body = r#"{"inner": [{"name": "ok"}, {"name": "a\u0000b"}]}"#;
        let err = read(body).unwrap_err();
        assert_eq!(err.code, homeostat_model::ErrorCode::Invalid);
        assert!(
            err.message.starts_with("inner[1].name: "),
            "{}",
            err.message
        );
        let kept: Outer = from_slice(body.as_bytes(), Nul::Replace).unwrap();
        assert_eq!(kept.inner[1].name, "a\u{fffd}b");
    }

    #[test]
    fn an_integral_number_is_an_integer_however_written() {
        assert_eq!(read(r#"{"uses": 3.0}"#).unwrap().uses, Some(3));
        assert_eq!(read(r#"{"uses": 3e0}"#).unwrap().uses, Some(3));
        assert!(read(r#"{"uses": 3.5}"#).is_err());
    }

    #[test]
    fn trailing_text_and_wrong_types_are_refused() {
        assert!(read(r#"{} {}"#).is_err());
        assert!(read(r#"{"uses": -1}"#).is_err());
        assert!(read(r#"{"uses": "1"}"#).is_err());
        assert!(
            read(r#"{"other": 1}"#)
                .unwrap_err()
                .message
                .contains("unknown field")
        );
    }
}
