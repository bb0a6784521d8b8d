//! `platform_configs` (migration 18): the keys an admin has set, the value as JSON text.

use sqlx::{AnyConnection, Row};

use super::{ConfigKey, ConfigValue, StoredConfig};
use crate::{error::Error, storage::Db};

/// Every stored key this version knows. A row of an unknown key (written by a newer version) or
/// with a value outside its key's type or bounds is skipped with a warning: the key keeps its
/// default rather than stopping the node.
pub async fn all(db: &Db) -> Result<Vec<StoredConfig>, Error> {
    let rows = sqlx::query("SELECT key, value, updated_at, updated_by FROM platform_configs")
        .fetch_all(db.pool())
        .await?;
    let mut stored = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get("key")?;
        let text: String = row.try_get("value")?;
        let Some(key) = ConfigKey::parse(&name) else {
            tracing::warn!(key = %name, "ignoring an unknown platform configuration key");
            continue;
        };
        let value = serde_json::from_str(&text)
            .ok()
            .and_then(|v| key.validate(&v).ok());
        let Some(value) = value else {
            tracing::warn!(key = %name, "ignoring a stored platform configuration value of the wrong type; the default applies");
            continue;
        };
        stored.push(StoredConfig {
            key,
            value,
            updated_at: row.try_get("updated_at")?,
            updated_by: row.try_get("updated_by")?,
        });
    }
    Ok(stored)
}

/// Sets `key` to `value` (inserting or replacing its row).
pub async fn set(
    tx: &mut AnyConnection,
    key: ConfigKey,
    value: ConfigValue,
    updated_by: Option<&str>,
) -> Result<(), Error> {
    let text = serde_json::to_string(&value).map_err(anyhow::Error::from)?;
    sqlx::query(
        "INSERT INTO platform_configs (key, value, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, \
         updated_by = excluded.updated_by",
    )
    .bind(key.name())
    .bind(text)
    .bind(crate::storage::now())
    .bind(updated_by)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
