//! Names that outlive an event: a connection or a room is named by its slab
//! key plus a generation, since slab keys are reused after the entry goes.
//!
//! A leaf module, so the room core, the history and the shell can share the
//! names without importing each other.

/// Names a connection across events: slab key plus generation, since slab
/// keys are reused after a connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    pub key: u32,
    pub gen: u32,
}

/// Names a room the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomRef {
    pub key: u32,
    pub gen: u32,
}
