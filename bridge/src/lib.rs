//! Channels of stable-fragmented-buffer bridged between hosts over Eclipse
//! Zenoh.
//!
//! A [`Bridge`] joins a namespace of this host to a Zenoh session. An
//! **export** subscribes to a local broadcast channel and publishes every
//! message on a Zenoh key expression; an **import** subscribes to a key
//! expression and publishes what arrives into a local channel. Run an
//! export on one host and an import of the same key on another, and the
//! subscribers of both hosts get the messages of the publishers of the
//! first. The default key of channel `C` of namespace `NS` is `sfb/NS/C`
//! ([`default_key`]).
//!
//! * **No echo, no loop.** Every publication carries the exporting
//!   session's id as its attachment; an import drops what its own session
//!   published. An export drops the messages its own bridge's imports put
//!   into the channel (it knows their producer record: see
//!   `Message::producer_record`), so a channel exported and imported on
//!   both hosts carries each message once everywhere.
//! * **Guarantees.** Zenoh's reliable, blocking pub/sub between connected
//!   sessions, in order per publisher. Across a cut of the connection or a
//!   bridge's restart, messages published meanwhile are not delivered to
//!   the other host (at most once); local delivery is never affected. A
//!   bridge killed is seen by local participants as a dead producer or
//!   consumer.
//! * Handles of the store do not cross: a message travels by value.
//!
//! Tests and examples connect on `127.0.0.1` only with multicast scouting
//! off ([`loopback_config`]).

use stable_fragmented_buffer::{
    BlobError, PinnedBlobStore, RecvTimeoutError, SendError, Subscriber,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use zenoh::Wait;

/// Why a bridge call failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Zenoh refused (a configuration, a session, a key expression).
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// The local store or channel refused.
    #[error(transparent)]
    Store(#[from] BlobError),
    /// The local channel refused a send.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The channel is a work queue; this bridge carries broadcast channels.
    #[error("channel \"{0}\" is a work queue: the bridge carries broadcast channels")]
    WorkQueue(String),
}

fn zerr(e: impl std::fmt::Display) -> BridgeError {
    BridgeError::Zenoh(e.to_string())
}

/// The default key expression of channel `channel` of namespace `ns`.
pub fn default_key(ns: &str, channel: &str) -> String {
    format!("sfb/{ns}/{channel}")
}

/// A Zenoh configuration that listens and connects on the given endpoints
/// only (for example `tcp/127.0.0.1:7447`), as a peer, with multicast
/// scouting and gossip off when `no_multicast` is set (as tests must): no
/// packet leaves for any address but those.
pub fn loopback_config(
    listen: &[String],
    connect: &[String],
    no_multicast: bool,
) -> Result<zenoh::Config, BridgeError> {
    let mut c = zenoh::Config::default();
    c.insert_json5("mode", "\"peer\"").map_err(zerr)?;
    let list = |v: &[String]| {
        let quoted: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(","))
    };
    c.insert_json5("listen/endpoints", &list(listen))
        .map_err(zerr)?;
    c.insert_json5("connect/endpoints", &list(connect))
        .map_err(zerr)?;
    if no_multicast {
        c.insert_json5("scouting/multicast/enabled", "false")
            .map_err(zerr)?;
        c.insert_json5("scouting/gossip/enabled", "false")
            .map_err(zerr)?;
    }
    Ok(c)
}

/// A namespace of this host joined to a Zenoh session. Dropping it stops
/// its exports and imports and closes the session.
pub struct Bridge {
    store: Arc<PinnedBlobStore>,
    session: zenoh::Session,
    stop: Arc<AtomicBool>,
    /// Producer records of this bridge's imports, per local channel: what
    /// an export of the same channel must not send back out.
    ours: Arc<Mutex<HashMap<String, Vec<u32>>>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("zid", &self.session.zid().to_string())
            .finish()
    }
}

/// How long a forwarding thread waits before it looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

impl Bridge {
    /// Opens a Zenoh session with `config` for `store`'s namespace.
    pub fn new(store: Arc<PinnedBlobStore>, config: zenoh::Config) -> Result<Self, BridgeError> {
        let session = zenoh::open(config).wait().map_err(zerr)?;
        Ok(Self {
            store,
            session,
            stop: Arc::new(AtomicBool::new(false)),
            ours: Arc::new(Mutex::new(HashMap::new())),
            threads: Vec::new(),
        })
    }

    /// This bridge's Zenoh session id.
    pub fn id(&self) -> String {
        self.session.zid().to_string()
    }

    /// Publishes every message of local broadcast channel `channel` (from
    /// now on) on `key_expr`.
    pub fn export(&mut self, channel: &str, key_expr: &str) -> Result<(), BridgeError> {
        let sub = subscribe(&self.store, channel)?;
        let publisher = self
            .session
            .declare_publisher(key_expr.to_owned())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .wait()
            .map_err(zerr)?;
        let origin = self.id().into_bytes();
        let (stop, ours, name) = (
            Arc::clone(&self.stop),
            Arc::clone(&self.ours),
            channel.to_owned(),
        );
        let t = std::thread::Builder::new()
            .name(format!("sfb-export-{channel}"))
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let m = match sub.recv_timeout(POLL) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(POLL);
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let imported = m.producer_record().is_some_and(|r| {
                        ours.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&name)
                            .is_some_and(|v| v.contains(&r))
                    });
                    if imported {
                        continue; // It came from another host: not back out.
                    }
                    let _ = publisher.put(m.to_vec()).attachment(origin.clone()).wait();
                }
            })
            .map_err(|e| BridgeError::Zenoh(format!("thread: {e}")))?;
        self.threads.push(t);
        Ok(())
    }

    /// Publishes into local broadcast channel `channel` every message that
    /// another session publishes on `key_expr`.
    pub fn import(&mut self, key_expr: &str, channel: &str) -> Result<(), BridgeError> {
        let publisher = match self.store.publisher(channel) {
            Ok(p) => p,
            Err(BlobError::ChannelKind { .. }) => {
                return Err(BridgeError::WorkQueue(channel.to_owned()))
            }
            Err(e) => return Err(e.into()),
        };
        self.ours
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.to_owned())
            .or_default()
            .push(publisher.record());
        let sub = self
            .session
            .declare_subscriber(key_expr.to_owned())
            .wait()
            .map_err(zerr)?;
        let own = self.id().into_bytes();
        let stop = Arc::clone(&self.stop);
        let t = std::thread::Builder::new()
            .name(format!("sfb-import-{channel}"))
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sample = match sub.recv_timeout(POLL) {
                        Ok(Some(s)) => s,
                        Ok(None) => continue,
                        Err(_) => return,
                    };
                    let from_us = sample
                        .attachment()
                        .is_some_and(|a| a.to_bytes().as_ref() == own.as_slice());
                    if from_us {
                        continue; // Our own export, delivered locally by Zenoh.
                    }
                    let data = sample.payload().to_bytes();
                    // One copy, into the slot (or the store, if larger).
                    let _ = publisher.send(&data);
                }
            })
            .map_err(|e| BridgeError::Zenoh(format!("thread: {e}")))?;
        self.threads.push(t);
        Ok(())
    }
}

fn subscribe(store: &PinnedBlobStore, channel: &str) -> Result<Subscriber, BridgeError> {
    match store.subscriber(channel) {
        Ok(s) => Ok(s),
        Err(BlobError::ChannelKind { .. }) => Err(BridgeError::WorkQueue(channel.to_owned())),
        Err(e) => Err(e.into()),
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
