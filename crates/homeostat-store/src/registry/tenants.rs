//! Tenants: created, re-tiered, read; audited.

use homeostat_model::{AuditAction, NewAuditEvent, PlanTier, Tenant, TenantId, new_id};
use serde_json::json;

use super::not_found;
use crate::audit_log;
use crate::backend::{Backend, Sql, Stmt};
use crate::error::{Context, StoreError, db_error};
use crate::rows::{self};
use crate::time::{ms, ts};

const INSERT_TENANT: Sql =
    Sql::both("INSERT INTO tenants (id, name, tier, created_at) VALUES ($1, $2, $3, $4)");

const SET_TIER: Sql =
    Sql::both("UPDATE tenants SET tier = $1 WHERE id = $2 RETURNING id, name, tier, created_at");

const TENANT: Sql = Sql::both("SELECT id, name, tier, created_at FROM tenants WHERE id = $1");

const TENANTS: Sql = Sql::both("SELECT id, name, tier, created_at FROM tenants ORDER BY name");

pub(crate) async fn create_tenant<B: Backend>(
    b: &B,
    name: &str,
    tier: PlanTier,
    actor: &str,
) -> Result<Tenant, StoreError> {
    let now = b.now();
    homeostat_model::validate_name("name", name)?;
    let op = "creating a tenant";
    let mut tx = b.begin(op).await?;
    let tenant = Tenant {
        id: new_id().into(),
        name: name.to_owned(),
        tier,
        created_at: ts(ms(now)),
    };
    let stmt = Stmt::new::<B>(INSERT_TENANT)
        .arg(tenant.id)
        .arg(name)
        .arg(tier.as_str())
        .arg(ms(now));
    B::execute_in(&mut tx, stmt).await.map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict {
            operation: op,
            entity: "tenant",
            id: name.to_owned(),
            reason: "a tenant with this name exists".into(),
        },
        e => db_error(op, e),
    })?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::TenantCreated.into(),
        subject: format!("tenant:{}", tenant.id),
        details: json!({"name": name, "tier": tier}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    Ok(tenant)
}

pub(crate) async fn set_tenant_tier<B: Backend>(
    b: &B,
    id: TenantId,
    tier: PlanTier,
    actor: &str,
) -> Result<Tenant, StoreError> {
    let now = b.now();
    let op = "changing a tenant's tier";
    let mut tx = b.begin(op).await?;
    let stmt = Stmt::new::<B>(SET_TIER).arg(tier.as_str()).arg(id);
    let rows = B::fetch_in(&mut tx, stmt).await.op(op)?;
    let row = rows.first().ok_or_else(|| not_found("tenant", id))?;
    let event = NewAuditEvent {
        actor: actor.to_owned(),
        action: AuditAction::TenantTierChanged.into(),
        subject: format!("tenant:{id}"),
        details: json!({"tier": tier}),
    };
    audit_log::append::<B>(&mut tx, &[event], ms(now)).await?;
    B::commit(tx, op).await?;
    rows::tenant(row)
}

pub(crate) async fn get_tenant<B: Backend>(b: &B, id: TenantId) -> Result<Tenant, StoreError> {
    let rows = b
        .fetch(Stmt::new::<B>(TENANT).arg(id))
        .await
        .op("reading a tenant")?;
    rows::tenant(rows.first().ok_or_else(|| not_found("tenant", id))?)
}

pub(crate) async fn list_tenants<B: Backend>(b: &B) -> Result<Vec<Tenant>, StoreError> {
    b.fetch(Stmt::new::<B>(TENANTS))
        .await
        .op("listing tenants")?
        .iter()
        .map(rows::tenant)
        .collect()
}
