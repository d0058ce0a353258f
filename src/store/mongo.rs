//! The `mongodb` room store: collection `rooms` of `DB_NAME`, with documents
//! too large for one BSON document (16 MiB) in `room_chunks`.
//!
//! A record is `{_id: code, room_id, host_id, host_public_id, owner?,
//! created_at, version, idle_since_ms, expire_at, doc_len, doc | chunks}`. A document up to
//! [`INLINE`] bytes sits in the record (`doc`); a larger one is cut into
//! [`CHUNK`]-byte pieces `{_id: "<code>/<version>/<i>", code, v, i, data}`.
//!
//! Without transactions, a save never tears a document because of its
//! order: the new version's chunks are written first (under ids naming the
//! version), then the record is switched to that version in one
//! single-document update guarded by the version, then older chunks are
//! removed. A crash between steps leaves unreferenced chunks, never a record
//! pointing at missing ones. A reader that finds a version's chunks
//! incomplete (a newer save removed them meanwhile) reads again.
//!
//! Retention: `expire_at` (when the room's idle time runs out) carries a TTL
//! index on both collections, so MongoDB removes rooms nobody asked for
//! again. Rooms with members are re-saved well before then by the loop
//! (`RoomStore`'s touch), so the TTL never removes a room in use.
//!
//! The client is built lazily on the store's threads (a `mongodb+srv://`
//! URI resolves DNS), with the same short timeouts as the accounts store; a
//! database that is down fails calls quickly and they are retried.

use super::{Backend, RoomRecord, WriteOp};
use crate::mongo::short;
use bytes::Bytes;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::sync::Collection;
use mongodb::IndexModel;
use std::sync::Mutex;
use std::time::Duration;

/// Documents up to this size are kept inside the record.
pub const INLINE: usize = 8 << 20;
/// Size of one piece of a larger document.
pub const CHUNK: usize = 8 << 20;

#[derive(Clone)]
struct Colls {
    rooms: Collection<Document>,
    chunks: Collection<Document>,
}

pub struct MongoStore {
    uri: String,
    db_name: String,
    idle_timeout: Option<Duration>,
    colls: Mutex<Option<Colls>>,
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

type R<T> = Result<T, String>;

fn m<T>(r: mongodb::error::Result<T>) -> R<T> {
    r.map_err(|e| short(&e))
}

fn chunk_id(code: &str, version: u64, i: usize) -> String {
    format!("{code}/{version}/{i}")
}

impl MongoStore {
    pub fn new(uri: &str, db_name: &str, idle_timeout: Option<Duration>) -> MongoStore {
        MongoStore {
            uri: uri.to_owned(),
            db_name: db_name.to_owned(),
            idle_timeout,
            colls: Mutex::new(None),
        }
    }

    /// The collections, connecting and creating the indexes on first use.
    fn colls(&self) -> R<Colls> {
        let mut guard = self.colls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &*guard {
            return Ok(c.clone());
        }
        let client = m(crate::mongo::client(&self.uri))?;
        let db = client.database(&self.db_name);
        let c = Colls {
            rooms: db.collection("rooms"),
            chunks: db.collection("room_chunks"),
        };
        let ttl = |name: &str| {
            IndexModel::builder()
                .keys(doc! { "expire_at": 1 })
                .options(
                    IndexOptions::builder()
                        .name(name.to_string())
                        .expire_after(Duration::ZERO)
                        .build(),
                )
                .build()
        };
        m(c.rooms.create_index(ttl("rooms_ttl")).run())?;
        m(c.chunks.create_index(ttl("room_chunks_ttl")).run())?;
        m(c.chunks
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "code": 1, "v": 1, "i": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("room_chunks_code".to_string())
                            .build(),
                    )
                    .build(),
            )
            .run())?;
        *guard = Some(c.clone());
        Ok(c)
    }

    fn expire_at(&self, idle_since_ms: u64) -> Bson {
        match self.idle_timeout {
            Some(t) => Bson::DateTime(DateTime::from_millis(
                idle_since_ms.saturating_add(t.as_millis() as u64) as i64,
            )),
            None => Bson::Null,
        }
    }

    fn save(&self, c: &Colls, r: &RoomRecord) -> R<()> {
        let version = r.version as i64;
        let doc_len = r.document.as_ref().map_or(0, |d| d.len());
        let expire_at = self.expire_at(r.idle_since_ms);
        let mut set = doc! {
            "room_id": &*r.room_id,
            "host_id": &*r.host_id,
            "host_public_id": &*r.host_public_id,
            "created_at": &*r.created_at,
            "version": version,
            "idle_since_ms": r.idle_since_ms as i64,
            "has_document": r.document.is_some(),
            "doc_len": doc_len as i64,
            "chunks": 0i32,
        };
        if !matches!(expire_at, Bson::Null) {
            set.insert("expire_at", expire_at.clone());
        }
        let mut unset = doc! {};
        match &r.owner {
            Some(o) => {
                set.insert("owner", &**o);
            }
            None => {
                unset.insert("owner", "");
            }
        }
        match &r.document {
            Some(d) if d.len() > INLINE => {
                let n = d.len().div_ceil(CHUNK);
                for (i, piece) in d.chunks(CHUNK).enumerate() {
                    let mut chunk = doc! {
                        "_id": chunk_id(&r.code, r.version, i),
                        "code": &*r.code,
                        "v": version,
                        "i": i as i32,
                        "data": Binary { subtype: BinarySubtype::Generic, bytes: piece.to_vec() },
                    };
                    if !matches!(expire_at, Bson::Null) {
                        chunk.insert("expire_at", expire_at.clone());
                    }
                    m(c.chunks
                        .replace_one(doc! { "_id": chunk_id(&r.code, r.version, i) }, chunk)
                        .upsert(true)
                        .run())?;
                }
                set.insert("chunks", n as i32);
                unset.insert("doc", "");
            }
            Some(d) => {
                set.insert(
                    "doc",
                    Binary {
                        subtype: BinarySubtype::Generic,
                        bytes: d.to_vec(),
                    },
                );
            }
            None => {
                unset.insert("doc", "");
            }
        }
        if matches!(expire_at, Bson::Null) {
            unset.insert("expire_at", "");
        }
        let mut update = doc! { "$set": set };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        let r2 = c
            .rooms
            .update_one(
                doc! { "_id": &*r.code, "version": { "$lt": version } },
                update,
            )
            .upsert(true)
            .run();
        match r2 {
            Ok(_) => {}
            // The filter missed because a record with a version not lower
            // exists: the upsert's insert collides with it. Ours is older
            // (or the same, written by an earlier try whose answer was
            // lost); either way there is nothing to replace.
            Err(e) if is_duplicate(&e) => {
                let stored = m(c.rooms.find_one(doc! { "_id": &*r.code }).run())?
                    .and_then(|d| d.get_i64("version").ok());
                if stored != Some(version) {
                    m(c.chunks
                        .delete_many(doc! { "code": &*r.code, "v": version })
                        .run())?;
                }
                return Ok(());
            }
            Err(e) => return Err(short(&e)),
        }
        m(c.chunks
            .delete_many(doc! { "code": &*r.code, "v": { "$lt": version } })
            .run())?;
        Ok(())
    }

    fn delete(&self, c: &Colls, code: &str, version: u64) -> R<()> {
        let stored = m(c.rooms.find_one(doc! { "_id": code }).run())?
            .and_then(|d| d.get_i64("version").ok());
        if stored.is_some_and(|v| v as u64 > version) {
            return Ok(()); // a newer room under that code
        }
        m(c.rooms
            .delete_one(doc! { "_id": code, "version": { "$lte": version as i64 } })
            .run())?;
        m(c.chunks
            .delete_many(doc! { "code": code, "v": { "$lte": version as i64 } })
            .run())?;
        Ok(())
    }

    fn read(&self, c: &Colls, code: &str, make: &dyn Fn(&[u8]) -> Bytes) -> R<Option<RoomRecord>> {
        // A save that replaces the document between reading the record and
        // reading its chunks removes them; read again then.
        for _ in 0..3 {
            let Some(d) = m(c.rooms.find_one(doc! { "_id": code }).run())? else {
                return Ok(None);
            };
            let text = |k: &str| d.get_str(k).map(str::to_owned).map_err(|e| e.to_string());
            let num = |k: &str| d.get_i64(k).map_err(|e| e.to_string());
            let version = num("version")? as u64;
            let doc_len = num("doc_len")? as usize;
            let chunks = d.get_i32("chunks").unwrap_or(0);
            let document = if !d.get_bool("has_document").unwrap_or(false) {
                None
            } else if chunks == 0 {
                let b = d.get_binary_generic("doc").map_err(|e| e.to_string())?;
                Some(make(b))
            } else {
                let mut buf = Vec::with_capacity(doc_len);
                let cursor = m(c
                    .chunks
                    .find(doc! { "code": code, "v": version as i64 })
                    .sort(doc! { "i": 1 })
                    .run())?;
                let mut n = 0;
                for chunk in cursor {
                    let chunk = m(chunk)?;
                    if chunk.get_i32("i").ok() != Some(n) {
                        break;
                    }
                    buf.extend_from_slice(
                        chunk
                            .get_binary_generic("data")
                            .map_err(|e| e.to_string())?,
                    );
                    n += 1;
                }
                if n != chunks || buf.len() != doc_len {
                    continue;
                }
                Some(make(&buf))
            };
            return Ok(Some(RoomRecord {
                code: code.into(),
                room_id: text("room_id")?.into(),
                host_id: text("host_id")?.into(),
                // A record without one gets a fresh public id on restore.
                host_public_id: d.get_str("host_public_id").unwrap_or_default().into(),
                owner: d.get_str("owner").ok().map(Into::into),
                created_at: text("created_at")?.into(),
                version,
                idle_since_ms: num("idle_since_ms")? as u64,
                document,
            }));
        }
        Err("the room's document kept changing while it was read".into())
    }
}

impl Backend for MongoStore {
    fn write(&self, ops: &[WriteOp]) -> Result<(), String> {
        let c = self.colls()?;
        for op in ops {
            match op {
                WriteOp::Save(r) => self.save(&c, r)?,
                WriteOp::Delete(code, v) => self.delete(&c, code, *v)?,
            }
        }
        Ok(())
    }

    fn load(
        &self,
        code: &str,
        make: &dyn Fn(&[u8]) -> Bytes,
    ) -> Result<Option<RoomRecord>, String> {
        let c = self.colls()?;
        self.read(&c, code, make)
    }

    fn expired(&self, now_ms: u64, idle_ms: u64) -> Result<Vec<(Box<str>, u64)>, String> {
        let c = self.colls()?;
        let limit = now_ms.saturating_sub(idle_ms) as i64;
        let cursor = m(c
            .rooms
            .find(doc! { "idle_since_ms": { "$lte": limit } })
            .projection(doc! { "_id": 1, "version": 1 })
            .run())?;
        let mut out = Vec::new();
        for d in cursor {
            let d = m(d)?;
            if let (Ok(code), Ok(v)) = (d.get_str("_id"), d.get_i64("version")) {
                out.push((code.into(), v as u64));
            }
        }
        Ok(out)
    }
}
