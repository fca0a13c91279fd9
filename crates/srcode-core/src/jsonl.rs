//! JSON Lines: one record a line. Reading reports the file and line of every bad record instead of
//! failing the whole file, so a large dataset with one broken line still loads (the caller decides
//! whether to skip or abort).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Errors of JSONL reading and writing.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Reads every record of a JSONL file. Blank lines are skipped. Returns the good records and, for
/// each bad line, an error with its file and 1-based line number.
pub fn read_lenient<T: DeserializeOwned>(
    path: &Path,
) -> Result<(Vec<T>, Vec<JsonlError>), JsonlError> {
    let f = File::open(path).map_err(|source| JsonlError::Io {
        path: path.into(),
        source,
    })?;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| JsonlError::Io {
            path: path.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(&line) {
            Ok(v) => good.push(v),
            Err(e) => bad.push(JsonlError::BadLine {
                path: path.into(),
                line: i + 1,
                reason: e.to_string(),
            }),
        }
    }
    Ok((good, bad))
}

/// Reads every record of a JSONL file, failing on the first bad line.
pub fn read_strict<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    let (good, mut bad) = read_lenient(path)?;
    if bad.is_empty() {
        Ok(good)
    } else {
        Err(bad.swap_remove(0))
    }
}

/// Replaces a file with `bytes` atomically: written to `<path>.tmp` beside it, then renamed, so
/// a reader or a kill never sees half a file.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes records, one per line, replacing the file atomically (write to a temporary file beside
/// it, then rename), so an interrupted write never leaves a truncated dataset.
pub fn write_atomic<T: Serialize>(path: &Path, records: &[T]) -> Result<(), JsonlError> {
    let io = |source| JsonlError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("jsonl.tmp");
    {
        let f = File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::new(f);
        for r in records {
            serde_json::to_writer(&mut w, r).map_err(|e| io(e.into()))?;
            w.write_all(b"\n").map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        id: u32,
        text: String,
    }

    #[test]
    fn bad_lines_are_reported_with_their_line_numbers() {
        let dir = std::env::temp_dir().join(format!("srcode-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        std::fs::write(
            &p,
            "{\"id\":1,\"text\":\"a\"}\n\n{\"id\":\"x\"}\n{\"id\":3,\"text\":\"c\"}\n",
        )
        .unwrap();
        let (good, bad) = read_lenient::<Rec>(&p).unwrap();
        assert_eq!(good.len(), 2);
        assert_eq!(bad.len(), 1);
        let msg = bad[0].to_string();
        assert!(msg.contains("a.jsonl:3:"), "{msg}");
        assert!(read_strict::<Rec>(&p).is_err());
        write_atomic(&p, &good).unwrap();
        assert_eq!(read_strict::<Rec>(&p).unwrap(), good);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
