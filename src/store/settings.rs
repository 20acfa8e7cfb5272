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
    /// Makes a relative SQLite file in `url` relative to `base` (the config file's directory);
    /// in-memory databases, absolute paths and PostgreSQL URLs are left as they are.
    pub fn resolve_path(&mut self, base: &std::path::Path) {
        if Backend::of(&self.url) != Some(Backend::Sqlite) {
            return;
        }
        let rest = self.url.strip_prefix("sqlite:").unwrap_or_default();
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (file, query) = match rest.split_once('?') {
            Some((file, query)) => (file, Some(query)),
            None => (rest, None),
        };
        let path = std::path::Path::new(file);
        if file.is_empty() || file.starts_with(':') || path.is_absolute() {
            return;
        }
        let mut url = format!("sqlite://{}", base.join(path).display());
        if let Some(query) = query {
            url = format!("{url}?{query}");
        }
        self.url = url;
    }

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

    #[test]
    fn a_relative_sqlite_file_is_resolved_against_the_base() {
        let resolved = |url: &str| {
            let mut s = super::DatabaseSettings {
                url: url.into(),
                ..Default::default()
            };
            s.resolve_path(std::path::Path::new("/srv/thalamus"));
            s.url
        };
        assert_eq!(
            resolved("sqlite://thalamus.db"),
            "sqlite:///srv/thalamus/thalamus.db"
        );
        assert_eq!(
            resolved("sqlite:db/t.db?mode=rwc"),
            "sqlite:///srv/thalamus/db/t.db?mode=rwc"
        );
        assert_eq!(resolved("sqlite:///var/t.db"), "sqlite:///var/t.db");
        assert_eq!(resolved("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(resolved("postgres://db/x"), "postgres://db/x");
    }
}
