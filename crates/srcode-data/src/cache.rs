//! The persistent teacher-response cache: SQLite, keyed by the SHA-256 of the model identity,
//! the messages and the sampling parameters. An interrupted build resumes without repeating a
//! call, and a re-run is reproducible.

use crate::error::{DataError, Result};
use crate::teacher::ChatRequest;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A response cache file.
pub struct ResponseCache {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl ResponseCache {
    /// Opens (creating if needed) the cache at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e: rusqlite::Error| DataError::Cache {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let conn = Connection::open(path).map_err(err)?;
        // WAL: readers never block the writer, and a killed process leaves a consistent file.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS responses (
                key TEXT PRIMARY KEY,
                model TEXT NOT NULL,
                request TEXT NOT NULL,
                response TEXT NOT NULL,
                created INTEGER NOT NULL
            );",
        )
        .map_err(err)?;
        Ok(ResponseCache {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> DataError {
        DataError::Cache {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The cache key of a request to a model.
    pub fn key(model: &str, req: &ChatRequest) -> (String, String) {
        let canonical = serde_json::json!({ "model": model, "request": req }).to_string();
        let digest = Sha256::digest(canonical.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        (hex, canonical)
    }

    pub fn get(&self, model: &str, req: &ChatRequest) -> Result<Option<String>> {
        let (key, _) = Self::key(model, req);
        let conn = self.conn.lock().map_err(|e| self.err(e))?;
        conn.query_row(
            "SELECT response FROM responses WHERE key = ?1",
            params![key],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    pub fn put(&self, model: &str, req: &ChatRequest, response: &str) -> Result<()> {
        let (key, canonical) = Self::key(model, req);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let conn = self.conn.lock().map_err(|e| self.err(e))?;
        conn.execute(
            "INSERT OR REPLACE INTO responses (key, model, request, response, created)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key, model, canonical, response, now],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Number of cached responses.
    pub fn len(&self) -> Result<usize> {
        let conn = self.conn.lock().map_err(|e| self.err(e))?;
        conn.query_row("SELECT COUNT(*) FROM responses", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| self.err(e))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}
