//! `database.*` settings: where models live and how patiently the store waits for them.

use serde::{Deserialize, Serialize};

/// Where models live: `sqlite://FILE` (embedded default) or `postgres://…` (production).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a connection, or one of the sync loop's calls, may take before it counts
    /// as failed (a database that stops answering is an outage too).
    pub timeout_seconds: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://thalamus.db".into(),
            max_connections: 8,
            timeout_seconds: 30,
        }
    }
}

impl DatabaseSettings {
    /// Checks the values the store cannot work with; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |key, problem: &str| Err((key, problem.to_string()));
        let url = &self.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return bad("database.url", "must start with sqlite:// or postgres://");
        }
        if self.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        if !(1..=86_400).contains(&self.timeout_seconds) {
            return bad("database.timeout_seconds", "must be from 1 to 86400");
        }
        Ok(())
    }
}
