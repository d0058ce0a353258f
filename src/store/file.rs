//! The `file` room store: one redb database, `DATA_DIR/rooms.redb`.
//!
//! redb is an embedded key-value store with ACID transactions and a
//! copy-on-write B-tree: a commit is durable when it returns, and a crash at
//! any moment leaves the file at the last committed transaction, so a
//! document is never torn.
//!
//! Layout: table `rooms` maps a room code to its [`Meta`] as JSON; table
//! `document_parts` maps `(code, i)` to the i-th [`PART`]-byte piece of the
//! document's raw JSON text. Both are written in the same transaction.
//! Pieces keep redb's memory small: it buffers every value it writes until
//! its write cache overflows, and a 16 MiB value would be one 16 MiB buffer.
//! (Records written before pieces existed keep their document whole in
//! table `documents`, which is still read.) A save replaces a record only when its version
//! is higher; a delete removes it only when the stored version is not higher
//! than the delete's.

use super::{Backend, Meta, RoomRecord, WriteOp};
use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const ROOMS: TableDefinition<&str, &str> = TableDefinition::new("rooms");
const PARTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("document_parts");
/// Earlier layout: the whole document under its code. Read, then removed.
const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
/// Size of one piece of a stored document.
pub const PART: usize = 256 * 1024;
/// redb's page cache (reads and dirty pages before a commit).
const CACHE_BYTES: usize = 4 << 20;

pub struct FileStore {
    db: Database,
}

impl FileStore {
    /// Opens (or creates) the store in `dir`. Errors name the path.
    pub fn open(dir: &Path) -> Result<FileStore, String> {
        let shown = dir.display();
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => return Err(format!("DATA_DIR={shown} is not a directory")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("DATA_DIR={shown} cannot be created: {e}"))?;
            }
            Err(e) => return Err(format!("DATA_DIR={shown} cannot be used: {e}")),
        }
        let path: PathBuf = dir.join("rooms.redb");
        // redb's page cache defaults to 1 GiB; the server lives in 100 MiB.
        // Rooms are read once per restart, so a small cache costs nothing.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| {
                format!(
                    "DATA_DIR={shown}: the room store {} cannot be opened: {e}",
                    path.display()
                )
            })?;
        // Create the tables now: a read before the first write then finds
        // them, and an unwritable directory fails here, at start-up.
        let init = || -> Result<(), DbErr> {
            let tx = db.begin_write()?;
            tx.open_table(ROOMS)?;
            tx.open_table(DOCUMENTS)?;
            tx.open_table(PARTS)?;
            tx.commit()?;
            Ok(())
        };
        init().map_err(|e| {
            format!(
                "DATA_DIR={shown}: the room store {} cannot be written: {}",
                path.display(),
                e.0
            )
        })?;
        Ok(FileStore { db })
    }
}

/// A redb error as text: every caller only logs it and retries.
struct DbErr(String);

impl<E: Into<redb::Error>> From<E> for DbErr {
    fn from(e: E) -> DbErr {
        DbErr(e.into().to_string())
    }
}

/// Removes every piece of `code`'s document.
fn remove_parts(
    parts: &mut redb::Table<(&'static str, u32), &'static [u8]>,
    code: &str,
) -> Result<(), DbErr> {
    let keys: Vec<u32> = parts
        .range((code, 0)..=(code, u32::MAX))?
        .map(|item| item.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for i in keys {
        parts.remove((code, i))?;
    }
    Ok(())
}

fn meta_of(json: &str) -> Option<Meta> {
    serde_json::from_str(json).ok()
}

impl Backend for FileStore {
    fn write(&self, ops: &[WriteOp]) -> Result<(), String> {
        let run = || -> Result<(), DbErr> {
            let tx = self.db.begin_write()?;
            {
                let mut rooms = tx.open_table(ROOMS)?;
                let mut docs = tx.open_table(DOCUMENTS)?;
                let mut parts = tx.open_table(PARTS)?;
                for op in ops {
                    match op {
                        WriteOp::Save(r) => {
                            let stored = rooms
                                .get(&*r.code)?
                                .and_then(|v| meta_of(v.value()))
                                .map(|m| m.version);
                            if stored.is_some_and(|v| v >= r.version) {
                                continue; // an older write never replaces a newer
                            }
                            let meta = serde_json::to_string(&r.meta())
                                .map_err(|e| DbErr(e.to_string()))?;
                            rooms.insert(&*r.code, meta.as_str())?;
                            docs.remove(&*r.code)?;
                            remove_parts(&mut parts, &r.code)?;
                            if let Some(d) = &r.document {
                                for (i, piece) in d.chunks(PART).enumerate() {
                                    parts.insert((&*r.code, i as u32), piece)?;
                                }
                            }
                        }
                        WriteOp::Delete(code, version) => {
                            let stored = rooms
                                .get(&**code)?
                                .and_then(|v| meta_of(v.value()))
                                .map(|m| m.version);
                            if stored.is_some_and(|v| v > *version) {
                                continue;
                            }
                            rooms.remove(&**code)?;
                            docs.remove(&**code)?;
                            remove_parts(&mut parts, code)?;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(())
        };
        run().map_err(|e| e.0)
    }

    fn load(
        &self,
        code: &str,
        make: &dyn Fn(&[u8]) -> Bytes,
    ) -> Result<Option<RoomRecord>, String> {
        let run = || -> Result<Option<RoomRecord>, DbErr> {
            let tx = self.db.begin_read()?;
            let rooms = tx.open_table(ROOMS)?;
            let Some(meta) = rooms.get(code)?.and_then(|v| meta_of(v.value())) else {
                return Ok(None);
            };
            let document = if meta.has_document {
                let parts = tx.open_table(PARTS)?;
                let mut buf = Vec::new();
                for item in parts.range((code, 0)..=(code, u32::MAX))? {
                    let (_, v) = item?;
                    buf.extend_from_slice(v.value());
                }
                if buf.is_empty() {
                    let docs = tx.open_table(DOCUMENTS)?;
                    docs.get(code)?.map(|v| make(v.value()))
                } else {
                    Some(make(&buf))
                }
            } else {
                None
            };
            Ok(Some(RoomRecord::from_meta(code, meta, document)))
        };
        run().map_err(|e| e.0)
    }

    fn expired(&self, now_ms: u64, idle_ms: u64) -> Result<Vec<(Box<str>, u64)>, String> {
        let run = || -> Result<Vec<(Box<str>, u64)>, DbErr> {
            let tx = self.db.begin_read()?;
            let rooms = tx.open_table(ROOMS)?;
            let mut out = Vec::new();
            for item in rooms.iter()? {
                let (k, v) = item?;
                if let Some(m) = meta_of(v.value()) {
                    if m.idle_since_ms.saturating_add(idle_ms) <= now_ms {
                        out.push((k.value().into(), m.version));
                    }
                }
            }
            Ok(out)
        };
        run().map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(tag: &str) -> Dir {
        let mut n = [0u8; 8];
        crate::util::fill_random(&mut n);
        Dir(std::env::temp_dir().join(format!(
            "sync-file-store-{tag}-{}-{}",
            std::process::id(),
            u64::from_le_bytes(n)
        )))
    }

    fn rec(version: u64, doc: Option<&str>) -> RoomRecord {
        RoomRecord {
            code: "R1".into(),
            room_id: "id".into(),
            host_id: "host".into(),
            host_public_id: "pub".into(),
            owner: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            version,
            idle_since_ms: 1_000,
            document: doc.map(|d| Bytes::copy_from_slice(d.as_bytes())),
        }
    }

    fn load(s: &FileStore) -> Option<RoomRecord> {
        s.load("R1", &|b| Bytes::copy_from_slice(b)).unwrap()
    }

    #[test]
    fn versions_guard_saves_and_deletes() {
        let d = dir("guard");
        let s = FileStore::open(&d.0).unwrap();
        assert_eq!(load(&s), None);
        s.write(&[WriteOp::Save(rec(5, Some("\"five\"")))]).unwrap();
        // An older write arriving late changes nothing.
        s.write(&[WriteOp::Save(rec(4, Some("\"four\"")))]).unwrap();
        assert_eq!(load(&s), Some(rec(5, Some("\"five\""))));
        // Neither does a delete of an older incarnation.
        s.write(&[WriteOp::Delete("R1".into(), 4)]).unwrap();
        assert!(load(&s).is_some());
        // A newer save without a document drops the stored one.
        s.write(&[WriteOp::Save(rec(6, None))]).unwrap();
        assert_eq!(load(&s), Some(rec(6, None)));
        assert_eq!(
            s.expired(1_000 + 60_000, 60_000).unwrap(),
            [("R1".into(), 6)]
        );
        assert!(s.expired(1_000 + 59_999, 60_000).unwrap().is_empty());
        s.write(&[WriteOp::Delete("R1".into(), 6)]).unwrap();
        assert_eq!(load(&s), None);
    }

    #[test]
    fn a_large_document_survives_reopening_and_the_file_is_locked() {
        let d = dir("large");
        let big = format!("\"{}\"", "z".repeat(16 << 20));
        {
            let s = FileStore::open(&d.0).unwrap();
            s.write(&[WriteOp::Save(rec(1, Some(&big)))]).unwrap();
            let err = FileStore::open(&d.0).err().expect("held by the first");
            assert!(
                err.contains("DATA_DIR=") && err.contains(&*d.0.to_string_lossy()),
                "{err}"
            );
        }
        let s = FileStore::open(&d.0).unwrap();
        let got = load(&s).unwrap();
        assert_eq!(got.document.as_deref(), Some(big.as_bytes()));
    }

    #[test]
    fn a_document_of_the_earlier_layout_is_read_then_moved() {
        let d = dir("legacy");
        let s = FileStore::open(&d.0).unwrap();
        let old = rec(3, Some("\"old\""));
        let tx = s.db.begin_write().unwrap();
        {
            let mut rooms = tx.open_table(ROOMS).unwrap();
            let meta = serde_json::to_string(&old.meta()).unwrap();
            rooms.insert("R1", meta.as_str()).unwrap();
            let mut docs = tx.open_table(DOCUMENTS).unwrap();
            docs.insert("R1", &b"\"old\""[..]).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(load(&s), Some(old));
        s.write(&[WriteOp::Save(rec(4, Some("\"new\"")))]).unwrap();
        assert_eq!(load(&s), Some(rec(4, Some("\"new\""))));
        let tx = s.db.begin_read().unwrap();
        assert!(tx
            .open_table(DOCUMENTS)
            .unwrap()
            .get("R1")
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_data_dir_that_is_a_file_is_refused() {
        let d = dir("file");
        std::fs::create_dir_all(&d.0).unwrap();
        let f = d.0.join("plain");
        std::fs::write(&f, b"x").unwrap();
        let err = FileStore::open(&f).err().unwrap();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
