//! Serialization of the reports (feature `serde`), for `sfb --json` and
//! monitoring tools. Most report types derive it; the ones below have
//! fields computed from others (a creator's state, counts, ages), written
//! by hand so the JSON says what the text report says.

use super::*;
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// `{"state": "alive" | "dead" | "none" | "unknown", "pid": n | null}`.
impl Serialize for Creator {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let state = match self {
            Creator::Alive { .. } => "alive",
            Creator::Dead { .. } => "dead",
            Creator::None => "none",
            Creator::Unknown => "unknown",
        };
        let mut st = s.serialize_struct("Creator", 2)?;
        st.serialize_field("state", state)?;
        st.serialize_field("pid", &self.pid())?;
        st.end()
    }
}

/// Its name (`ok`, `corrupt`, ...).
impl Serialize for Health {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Its name (`free`, `in use`, ...).
impl Serialize for ChunkState {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Every field, plus `committed` and `age_ms`.
impl Serialize for ChunkHeaderInfo {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ChunkHeaderInfo", 21)?;
        st.serialize_field("chunk_id", &self.chunk_id)?;
        st.serialize_field("generation", &self.generation)?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("size", &self.size)?;
        st.serialize_field("used", &self.used)?;
        st.serialize_field("capacity", &self.capacity)?;
        st.serialize_field("sealed", &self.sealed)?;
        st.serialize_field("entries", &self.entries)?;
        st.serialize_field("committed", &self.committed())?;
        st.serialize_field("pending_bytes", &self.pending_bytes)?;
        st.serialize_field("walked", &self.walked)?;
        st.serialize_field("backed", &self.backed)?;
        st.serialize_field("acknowledged", &self.acknowledged)?;
        st.serialize_field("pins", &self.pins)?;
        st.serialize_field("dedicated", &self.dedicated)?;
        st.serialize_field("activating", &self.activating)?;
        st.serialize_field("age_ms", &self.age_ms())?;
        st.serialize_field("activated_ago_ms", &self.activated_ago_ms)?;
        st.serialize_field("first_write_ago_ms", &self.first_write_ago_ms)?;
        st.serialize_field("sealed_ago_ms", &self.sealed_ago_ms)?;
        st.serialize_field("empty_since_ago_ms", &self.empty_since_ago_ms)?;
        st.end()
    }
}

/// The control file's presence and sizes, as one object.
#[derive(serde::Serialize)]
struct CtrlFile {
    present: bool,
    bytes: u64,
    tmpfs_bytes: u64,
}

/// Every field (the control file's as `ctrl`), plus `dead`, `chunk_files`,
/// `tmpfs_bytes` and `age_ms`.
impl Serialize for NamespaceReport {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("NamespaceReport", 15)?;
        st.serialize_field("namespace", &self.namespace)?;
        st.serialize_field("dir", &self.dir.display().to_string())?;
        st.serialize_field("health", &self.health)?;
        st.serialize_field("creator", &self.creator)?;
        st.serialize_field("dead", &self.is_dead())?;
        st.serialize_field("format_version", &self.format_version)?;
        st.serialize_field(
            "ctrl",
            &CtrlFile {
                present: self.ctrl_present,
                bytes: self.ctrl_bytes,
                tmpfs_bytes: self.ctrl_tmpfs_bytes,
            },
        )?;
        st.serialize_field("control", &self.control)?;
        st.serialize_field("chunks", &self.chunks)?;
        st.serialize_field("channels", &self.channels)?;
        st.serialize_field("chunk_files", &self.chunk_files())?;
        st.serialize_field("tmpfs_bytes", &self.tmpfs_bytes())?;
        st.serialize_field("age_ms", &self.age_ms())?;
        st.serialize_field("problems", &self.problems)?;
        st.serialize_field("taken_unix_ms", &self.taken_unix_ms)?;
        st.end()
    }
}
