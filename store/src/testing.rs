//! Throwaway PostgreSQL databases for tests and benches.
//!
//! Tests that need PostgreSQL read its server URL from `TESSERA_TEST_POSTGRES`
//! (for example `postgres://postgres@127.0.0.1:5433/postgres`; `.ci/run` starts
//! a server and sets it) and each make a database of their own, dropped when
//! the [`TestDatabase`] is. Without the variable they are skipped with a loud
//! message, unless `TESSERA_REQUIRE_POSTGRES=1` (set in CI), which makes a
//! missing server a failure instead.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::types::random_u64;
use crate::StoreError;

/// The server tests may use, if any. Panics when one is required but missing.
pub fn postgres_server() -> Option<String> {
    match std::env::var("TESSERA_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("TESSERA_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
            panic!("TESSERA_REQUIRE_POSTGRES=1 but TESSERA_TEST_POSTGRES is not set: PostgreSQL tests cannot be skipped here")
        }
        _ => {
            eprintln!(
                "SKIPPED (PostgreSQL): TESSERA_TEST_POSTGRES is not set, so this test ran on SQLite only. \
                 `bash scripts/test.sh` starts a server and sets it."
            );
            None
        }
    }
}

/// A database of its own on a test server, dropped with this value.
#[derive(Debug)]
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database on `server`.
    pub async fn create(server: &str) -> Result<Self, StoreError> {
        let name = format!("tessera_test_{:016x}", random_u64());
        let fail = |e: sqlx::Error| StoreError::Open {
            url: crate::StoreUrl::Postgres(server.into()).to_string(),
            reason: e.to_string(),
        };
        let mut admin = connect(server).await.map_err(fail)?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.map_err(fail)?;
        let _ = admin.close().await;
        let options = PgConnectOptions::from_str(server).map_err(fail)?.database(&name);
        Ok(Self { server: server.into(), url: options.to_url_lossy().to_string(), name })
    }

    /// The database's URL, for `Store::open` or `--db`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn connect(server: &str) -> Result<PgConnection, sqlx::Error> {
    PgConnectOptions::from_str(server)?.connect().await
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any runtime the test may have had: use a thread of its own.
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut admin = connect(&server).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.ok()
            })
        });
        if !matches!(dropped.join(), Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
