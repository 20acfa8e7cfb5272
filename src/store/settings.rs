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

/// Which backend a `database.url` names, read from its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:…`: the embedded default, one process.
    Sqlite,
    /// `postgres:…` or `postgresql:…`: production, replicas.
    Postgres,
}

impl Backend {
    /// The backend `url` names, if its scheme is one thalamus speaks.
    pub fn of(url: &str) -> Option<Self> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Some(Backend::Sqlite),
            Some("postgres" | "postgresql") => Some(Backend::Postgres),
            _ => None,
        }
    }
}

impl DatabaseSettings {
    /// Checks the values the store cannot work with; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |key, problem: &str| Err((key, problem.to_string()));
        if Backend::of(&self.url).is_none() {
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

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn the_scheme_names_the_backend() {
        assert_eq!(Backend::of("sqlite://thalamus.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://db/x"), Some(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://db/x"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://db/x"), None);
        assert_eq!(Backend::of("thalamus.db"), None);
    }
}
