//! The `sfb` binary, run for real against real stores: live ones (made by
//! this process), dead ones (their creator, a child process, SIGKILLed),
//! corrupt ones and foreign files.
//!
//! Tests run in parallel with each other (and other test binaries may run
//! at the same time), so they only ever assert about their own namespaces,
//! and the one test that removes every dead namespace does it in a private
//! shm directory (`SFB_SHM_DIR`) holding only its own files.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{env, hex, payload, say, spawn_peer, Ns, Peer};
use serde_json::Value;
use stable_fragmented_buffer::layout::{
    entry_footprint, ChunkHeader, CtrlHeader, CHUNK_HEADER_SIZE, CHUNK_MAGIC, CTRL_MAGIC,
    CTRL_SIZE, FORMAT_VERSION,
};
use stable_fragmented_buffer::{ChannelConfig, Config, Overflow, PinnedBlobStore, RecvError};
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ENTRY: &str = "peer_process_entry_point";
const CHUNK: usize = 64 << 10;

/// Not a test of its own: the entry point of peer processes. Without
/// `SFB_PEER_ROLE` (a normal test run) it has nothing to do.
#[test]
#[ignore = "not a test: the entry point of this file's peer processes (common::spawn_peer runs it)"]
fn peer_process_entry_point() {
    let Some(role) = common::peer_role() else {
        return;
    };
    match role.as_str() {
        "creator" => role_creator(),
        "chan-consumer" => role_chan_consumer(),
        "chan-producer" => role_chan_producer(),
        other => panic!("unknown role {other}"),
    }
}

/// Creates the namespace `SFB_NS` (in `SFB_SHM_DIR` if set), appends one
/// blob, reports, then waits to be killed.
fn role_creator() {
    let store = PinnedBlobStore::new_shared(Config::default(), &env("SFB_NS"), CHUNK).unwrap();
    let h = store.append_shared(&payload(7, 1000)).unwrap();
    say(format!("ready {}", hex(&h)));
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
    std::thread::sleep(Duration::from_secs(3600));
}

/// The channel of the held-back tests: 16 slots of 100-byte messages; a
/// broadcast blocks its publishers (`Overflow::Block`).
fn block_cfg() -> ChannelConfig {
    ChannelConfig::for_messages(100, 16).overflow(Overflow::Block)
}

/// Whether the channel peers use a work queue (`SFB_KIND=queue`) or a
/// broadcast.
fn queue_peer() -> bool {
    env("SFB_KIND") == "queue"
}

/// Opens a subscriber (or receiver) of `SFB_CHAN` in namespace `SFB_NS`,
/// reports "ready", receives until disconnected, and reports "got N".
fn role_chan_consumer() {
    let store = PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap();
    let chan = env("SFB_CHAN");
    let mut got = 0u64;
    if queue_peer() {
        let rx = store.receiver_with(&chan, block_cfg()).unwrap();
        say("ready");
        while rx.recv().is_ok() {
            got += 1;
        }
    } else {
        let rx = store.subscriber_with(&chan, block_cfg()).unwrap();
        say("ready");
        loop {
            match rx.recv() {
                Ok(_) => got += 1,
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
    say(format!("got {got}"));
}

/// A blocking send of a publisher or a sender.
type SendFn = Box<dyn Fn(&[u8])>;

/// Opens a publisher (or sender) of `SFB_CHAN`, reports "ready", sends
/// `SFB_COUNT` messages (blocking while the channel is full), reports
/// "sent N", and waits for a line on stdin before it leaves.
fn role_chan_producer() {
    let store = PinnedBlobStore::attach_shared(Config::default(), &env("SFB_NS")).unwrap();
    let chan = env("SFB_CHAN");
    let n: u64 = env("SFB_COUNT").parse().unwrap();
    let send: SendFn = if queue_peer() {
        let tx = store.sender_with(&chan, block_cfg()).unwrap();
        Box::new(move |m| tx.send(m).unwrap())
    } else {
        let tx = store.publisher_with(&chan, block_cfg()).unwrap();
        Box::new(move |m| tx.send(m).unwrap())
    };
    say("ready");
    for i in 0..n {
        send(&payload(i, 100));
    }
    say(format!("sent {n}"));
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}

/// Starts a channel peer (`chan-consumer` or `chan-producer`) on channel
/// `chan` of `ns` and waits until it is ready.
fn start_chan_peer(role: &str, ns: &Ns, kind: &str, chan: &str, count: u64) -> Peer {
    let env = [
        ("SFB_NS", ns.0.clone()),
        ("SFB_KIND", kind.to_owned()),
        ("SFB_CHAN", chan.to_owned()),
        ("SFB_COUNT", count.to_string()),
    ];
    let mut peer = spawn_peer(ENTRY, role, &env);
    peer.expect("ready");
    peer
}

/// Stops a peer with SIGSTOP and waits until it has stopped.
fn sigstop(p: &Peer) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGSTOP) };
    let t = std::time::Instant::now();
    while !p.is_stopped() {
        assert!(t.elapsed() < Duration::from_secs(10), "never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Tells a `chan-producer` peer that it may leave, and waits until it has.
fn release(mut p: Peer) {
    use std::io::Write;
    p.child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    p.wait_ok();
}

/// Starts a creator of `ns` (in `dir` if given) and waits until it is ready.
fn start_creator(ns: &str, dir: Option<&Path>) -> Peer {
    let mut env = vec![("SFB_NS", ns.to_owned())];
    if let Some(d) = dir {
        env.push(("SFB_SHM_DIR", d.display().to_string()));
    }
    let mut peer = spawn_peer(ENTRY, "creator", &env);
    let line = peer.line().unwrap();
    assert!(line.starts_with("ready "), "{line}");
    peer
}

/// Output of one run of the real binary.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.out, self.err))
    }
}

fn sfb(args: &[&str]) -> (i32, String, String) {
    let r = sfb_in(None, args);
    (r.code, r.out, r.err)
}

/// Runs `sfb` with `SFB_SHM_DIR=dir` if given (else the test's own shm dir).
fn sfb_in(dir: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfb"));
    cmd.args(args);
    if let Some(d) = dir {
        cmd.env("SFB_SHM_DIR", d);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every file of `dir` whose name starts with `prefix`, with its bytes and
/// modification time: what "never modified" is checked against.
fn snapshot(dir: &Path, prefix: &str) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            let bytes = std::fs::read(e.path()).ok()?;
            let mtime = e.metadata().ok()?.modified().ok()?;
            Some((name, bytes, mtime))
        })
        .collect();
    v.sort();
    v
}

/// The entry of `ns` in `sfb list --json`.
fn listed<'a>(list: &'a Value, ns: &str) -> &'a Value {
    list["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == ns)
        .unwrap_or_else(|| panic!("{ns} not listed: {list:#}"))
}

/// A file this test made outside any namespace, removed on drop.
struct FileGuard(PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A private shm directory inside the real one (same tmpfs), named after a
/// namespace of the test, removed with everything in it on drop.
struct PrivateDir(PathBuf, #[allow(dead_code)] Ns);

impl PrivateDir {
    fn new(tag: &str) -> Self {
        let ns = Ns::new(tag);
        let dir = common::shm_dir().join(format!("{}-dir", ns.0));
        std::fs::create_dir(&dir).unwrap();
        PrivateDir(dir, ns)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_ctrl_like(path: &Path, len: usize, fill: u8) {
    let mut b = vec![fill; len];
    let m = offset_of!(CtrlHeader, magic);
    b[m..m + 8].copy_from_slice(&CTRL_MAGIC.to_le_bytes());
    let v = offset_of!(CtrlHeader, version);
    b[v..v + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

#[test]
fn demo_moves_verified_payloads_between_two_processes_and_leaves_nothing() {
    let (code, out, err) = sfb(&[
        "demo",
        "--messages",
        "3000",
        "--size",
        "1000",
        "--chunk-size",
        "65536",
        "--max-chunks",
        "4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // 3000 streamed, then 2000 paced for the latency figures.
    assert!(
        out.contains("5000 messages verified byte for byte"),
        "{out}"
    );
    assert!(out.contains("one-way latency, paced messages"), "{out}");
    assert!(out.contains(", 0 bad"), "{out}");
    assert!(out.contains("nothing left in /dev/shm"), "{out}");
}

#[test]
fn list_and_stat_show_a_live_store_without_changing_a_byte() {
    let ns = Ns::new("cli-live");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    let handles: Vec<_> = (0..3)
        .map(|i| store.append_shared(&payload(i, 500)).unwrap())
        .collect();
    assert!(store.acknowledge_shared(&handles[0]));
    let dir = common::shm_dir();
    let before = snapshot(&dir, &format!("{}_", ns.0));
    let me = std::process::id();

    let list = sfb_in(None, &["list"]);
    assert_eq!(list.code, 0, "{}", list.err);
    let line = list
        .out
        .lines()
        .find(|l| l.starts_with(&format!("{} ", ns.0)))
        .unwrap_or_else(|| panic!("{}", list.out));
    assert!(line.contains(&format!("alive (pid {me})")), "{line}");
    assert!(line.ends_with("ok"), "{line}");
    assert!(list.out.contains("NAMESPACE") && list.out.contains("HEALTH"));

    let list = sfb_in(None, &["list", "--json"]);
    assert_eq!(list.code, 0, "{}", list.err);
    let v = list.json();
    let n = listed(&v, ns.as_str());
    assert_eq!(n["health"], "ok");
    assert_eq!(n["creator"]["state"], "alive");
    assert_eq!(n["creator"]["pid"], me);
    assert_eq!(n["dead"], false);
    assert_eq!(n["chunk_files"], 1);
    assert_eq!(n["format_version"], FORMAT_VERSION);
    assert!(n["tmpfs_bytes"].as_u64().unwrap() >= (CHUNK + CTRL_SIZE) as u64);
    assert!(n["age_ms"].as_u64().is_some());

    let stat = sfb_in(None, &["stat", ns.as_str()]);
    assert_eq!(stat.code, 0, "{}", stat.err);
    for want in [
        "alive (pid",
        "chunk size",
        "64.0 KiB",
        "ID",
        "GEN",
        "STATE",
        "USED / CAPACITY",
        "ENTRIES",
        "COMMITTED",
        "ACKED",
        "PINS",
        "AGE",
        "IN_USE",
        "active",
    ] {
        assert!(stat.out.contains(want), "{want} missing:\n{}", stat.out);
    }

    let stat = sfb_in(None, &["stat", "--json", ns.as_str()]);
    assert_eq!(stat.code, 0, "{}", stat.err);
    let v = stat.json();
    assert_eq!(v["health"], "ok");
    assert_eq!(v["creator"]["pid"], me);
    assert_eq!(v["control"]["chunk_size"], CHUNK);
    assert_eq!(v["control"]["closed"], false);
    let chunks = v["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 1);
    let h = &chunks[0]["header"];
    assert_eq!(chunks[0]["active"], true);
    assert_eq!(h["state"], "IN_USE");
    assert_eq!(h["generation"], handles[0].generation);
    assert_eq!(h["entries"], 3);
    assert_eq!(h["committed"], 2, "written, not yet acknowledged");
    assert_eq!(h["acknowledged"], 1);
    assert_eq!(h["pending_bytes"], 0);
    assert_eq!(h["pins"], 0);
    assert_eq!(h["capacity"], CHUNK - CHUNK_HEADER_SIZE);
    assert_eq!(h["used"], 3 * entry_footprint(500).unwrap());
    assert!(v["problems"].as_array().unwrap().is_empty());

    assert_eq!(
        before,
        snapshot(&dir, &format!("{}_", ns.0)),
        "list/stat changed the store"
    );
    for h in &handles {
        assert!(store.resolve(h).is_some());
    }
}

#[test]
fn stat_watch_refreshes_and_stops_after_count() {
    let ns = Ns::new("cli-watch");
    let _store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    let r = sfb_in(
        None,
        &[
            "stat",
            ns.as_str(),
            "--watch",
            "--interval",
            "50ms",
            "--count",
            "3",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let header = format!("namespace {} in ", ns.0);
    assert_eq!(r.out.matches(&header).count(), 3, "{}", r.out);
    // Not a terminal: frames follow each other, no escape sequences.
    assert!(!r.out.contains('\x1b'));

    let r = sfb_in(
        None,
        &[
            "stat",
            ns.as_str(),
            "--json",
            "--watch",
            "--interval",
            "0.05",
            "--count",
            "2",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.err);
    let frames: Vec<Value> = r
        .out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| f["namespace"] == ns.as_str()));
}

#[test]
fn a_store_whose_creator_was_sigkilled_is_listed_dead_and_cleaned_up() {
    let ns = Ns::new("cli-dead");
    let mut creator = start_creator(ns.as_str(), None);
    let pid = creator.child.id();
    creator.kill9();
    let dir = common::shm_dir();
    let prefix = format!("{}_", ns.0);
    let before = snapshot(&dir, &prefix);
    assert_eq!(before.len(), 2);

    let v = sfb_in(None, &["list", "--json"]).json();
    let n = listed(&v, ns.as_str());
    assert_eq!(n["creator"]["state"], "dead");
    assert_eq!(n["creator"]["pid"], pid);
    assert_eq!(n["dead"], true);
    assert_eq!(n["health"], "ok");
    let list = sfb_in(None, &["list"]);
    assert!(
        list.out.contains(&format!("dead (pid {pid})")),
        "{}",
        list.out
    );
    assert!(list.out.contains("sfb cleanup --dead"), "{}", list.out);

    let stat = sfb_in(None, &["stat", ns.as_str()]);
    assert_eq!(stat.code, 0, "{}", stat.err);
    assert!(
        stat.out.contains(&format!("dead (pid {pid})")),
        "{}",
        stat.out
    );
    let v = sfb_in(None, &["stat", "--json", ns.as_str()]).json();
    assert_eq!(v["dead"], true);
    assert_eq!(v["chunks"][0]["header"]["committed"], 1);

    // Dry runs print what would go and remove nothing.
    let dry = sfb_in(None, &["cleanup", "--dead", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.err);
    assert!(
        dry.out
            .contains(&format!("would remove namespace {} (creator dead", ns.0)),
        "{}",
        dry.out
    );
    assert!(dry.out.contains("dry run: nothing was removed"));
    let dry = sfb_in(None, &["cleanup", "--dry-run", ns.as_str()]);
    assert_eq!(dry.code, 0, "{}", dry.err);
    assert!(dry.out.contains(&format!("{}_ctrl", ns.0)), "{}", dry.out);
    assert_eq!(before, snapshot(&dir, &prefix), "a dry run changed files");

    let r = sfb_in(None, &["cleanup", ns.as_str()]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("removed 2 file(s)"), "{}", r.out);
    assert!(ns.files().is_empty());
    // Cleaning up what is not there is not an error, and says so.
    let r = sfb_in(None, &["cleanup", ns.as_str()]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.contains("nothing to remove"), "{}", r.out);
}

#[test]
fn cleanup_dead_removes_only_the_dead_namespaces_and_never_foreign_files() {
    // A directory of our own: `--dead` acts on every namespace it sees.
    let dir = PrivateDir::new("cli-dead-all");
    let d = Some(dir.0.as_path());
    let pid = std::process::id();
    let (dead_ns, live_ns) = (format!("sfbt-{pid}-a"), format!("sfbt-{pid}-b"));
    let (foreign_ns, orphan_ns) = (format!("sfbt-{pid}-c"), format!("sfbt-{pid}-d"));
    let mut dead = start_creator(&dead_ns, d);
    dead.kill9();
    let live = start_creator(&live_ns, d);
    // A file of another program, one under a name of ours with foreign
    // content, and chunk files left without a control block.
    std::fs::write(dir.0.join("other-program.bin"), b"not yours").unwrap();
    std::fs::write(dir.0.join(format!("{foreign_ns}_ctrl")), b"#!/bin/sh\n").unwrap();
    std::fs::write(dir.0.join(format!("{orphan_ns}_data_3")), vec![0u8; 4096]).unwrap();
    let all = snapshot(&dir.0, "");
    assert_eq!(all.len(), 7);

    let v = sfb_in(d, &["list", "--json"]).json();
    assert_eq!(listed(&v, &dead_ns)["dead"], true);
    assert_eq!(listed(&v, &live_ns)["creator"]["state"], "alive");
    assert_eq!(listed(&v, &foreign_ns)["health"], "foreign");
    assert_eq!(listed(&v, &foreign_ns)["dead"], false);
    assert_eq!(listed(&v, &orphan_ns)["health"], "orphaned");
    assert_eq!(listed(&v, &orphan_ns)["dead"], true);
    assert_eq!(v["other_files"][0]["name"], "other-program.bin");

    let dry = sfb_in(d, &["cleanup", "--dead", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.err);
    assert!(
        dry.out.contains("would remove 2 dead namespace(s)"),
        "{}",
        dry.out
    );
    assert_eq!(all, snapshot(&dir.0, ""), "a dry run changed files");

    let r = sfb_in(d, &["cleanup", "--dead"]);
    assert_eq!(r.code, 0, "{}{}", r.out, r.err);
    assert!(
        r.out.contains(&format!("removed namespace {dead_ns}")),
        "{}",
        r.out
    );
    assert!(
        r.out.contains(&format!("removed namespace {orphan_ns}")),
        "{}",
        r.out
    );
    assert!(
        r.out.contains("1 live namespace(s) left alone"),
        "{}",
        r.out
    );
    let left: Vec<String> = snapshot(&dir.0, "").into_iter().map(|f| f.0).collect();
    assert_eq!(
        left,
        [
            "other-program.bin".to_owned(),
            format!("{live_ns}_ctrl"),
            format!("{live_ns}_data_0"),
            format!("{foreign_ns}_ctrl"),
        ]
    );
    // Foreign files are refused by name too, and stay byte for byte.
    let r = sfb_in(d, &["cleanup", &foreign_ns]);
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains("not stable-fragmented-buffer's") && r.err.contains("rm "),
        "{}",
        r.err
    );
    let r = sfb_in(d, &["cleanup", "--force", &foreign_ns]);
    assert_eq!(r.code, 1, "{}", r.out);
    let after = snapshot(&dir.0, "");
    for name in ["other-program.bin".to_owned(), format!("{foreign_ns}_ctrl")] {
        let was = all.iter().find(|f| f.0 == name).unwrap();
        assert!(after.contains(was), "{name} changed");
    }
    drop(live);
}

#[test]
fn corrupt_stores_are_reported_and_left_as_they_are() {
    let dir = common::shm_dir();
    // Our magic and version, then garbage; and a chunk file whose header
    // contradicts its name and size.
    let garbage = Ns::new("cli-garbage");
    write_ctrl_like(&dir.join(format!("{}_ctrl", garbage.0)), CTRL_SIZE, 0xa5);
    let mut chunk = vec![0u8; 4096];
    let m = offset_of!(ChunkHeader, magic);
    chunk[m..m + 8].copy_from_slice(&CHUNK_MAGIC.to_le_bytes());
    let id = offset_of!(ChunkHeader, chunk_id);
    chunk[id..id + 4].copy_from_slice(&9u32.to_le_bytes());
    std::fs::write(dir.join(format!("{}_data_0", garbage.0)), &chunk).unwrap();
    // Truncated control block; zero-length control block.
    let truncated = Ns::new("cli-truncated");
    write_ctrl_like(&dir.join(format!("{}_ctrl", truncated.0)), 100, 0);
    let empty = Ns::new("cli-empty");
    std::fs::write(dir.join(format!("{}_ctrl", empty.0)), b"").unwrap();
    let snap = |ns: &Ns| snapshot(&dir, &format!("{}_", ns.0));
    let before = [snap(&garbage), snap(&truncated), snap(&empty)];

    let v = sfb_in(None, &["list", "--json"]).json();
    for (ns, health) in [
        (&garbage, "corrupt"),
        (&truncated, "corrupt"),
        (&empty, "foreign"),
    ] {
        let n = listed(&v, ns.as_str());
        assert_eq!(n["health"], health, "{n:#}");
        assert!(!n["problems"].as_array().unwrap().is_empty());
        // Nobody holds the lock of a file written by hand.
        let want = if health == "foreign" { "none" } else { "dead" };
        assert_eq!(n["creator"]["state"], want, "{n:#}");
    }
    let list = sfb_in(None, &["list"]);
    assert_eq!(list.code, 0, "{}", list.err);
    assert!(
        list.out.contains("problems (see `sfb stat NAMESPACE`)"),
        "{}",
        list.out
    );

    let stat = sfb_in(None, &["stat", garbage.as_str()]);
    assert_eq!(stat.code, 0, "{}", stat.err);
    assert!(stat.out.contains(": corrupt"), "{}", stat.out);
    assert!(stat.out.contains("chunk_size"), "{}", stat.out);
    assert!(
        stat.out.contains("header says chunk 9, file name says 0"),
        "{}",
        stat.out
    );
    assert!(stat.out.contains("CORRUPT"), "{}", stat.out);
    let v = sfb_in(None, &["stat", "--json", truncated.as_str()]).json();
    assert_eq!(v["health"], "corrupt");
    assert!(
        v["problems"][0].as_str().unwrap().contains("100 bytes"),
        "{v:#}"
    );
    // An empty file under our name is not ours to judge: refused, exit 1.
    let stat = sfb_in(None, &["stat", empty.as_str()]);
    assert_eq!(stat.code, 1);
    assert!(stat.err.contains("remove them yourself"), "{}", stat.err);

    assert_eq!(before, [snap(&garbage), snap(&truncated), snap(&empty)]);
    // A corrupt store of ours can be removed by name.
    let r = sfb_in(None, &["cleanup", garbage.as_str()]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(garbage.files().is_empty());
}

#[test]
fn other_programs_files_are_listed_and_never_touched() {
    let dir = common::shm_dir();
    let name = format!("{}-foreign.dat", Ns::new("cli-other").0);
    let _guard = FileGuard(dir.join(&name));
    std::fs::write(dir.join(&name), b"someone else's").unwrap();
    let before = snapshot(&dir, &name);

    let list = sfb_in(None, &["list"]);
    assert_eq!(list.code, 0, "{}", list.err);
    assert!(list
        .out
        .contains("other files (not stable-fragmented-buffer's; left alone)"));
    assert!(list.out.contains(&name), "{}", list.out);
    let v = sfb_in(None, &["list", "--json"]).json();
    let f = v["other_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name.as_str())
        .unwrap();
    assert_eq!(f["kind"], "file");
    assert_eq!(f["bytes"], 14);

    let dry = sfb_in(None, &["cleanup", "--dead", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.err);
    assert!(!dry.out.contains(&name));
    assert_eq!(before, snapshot(&dir, &name));
}

#[test]
fn cleanup_refuses_a_live_namespace_and_removes_it_with_force() {
    let ns = Ns::new("cli-cleanup");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 65536).unwrap();
    let (code, _, err) = sfb(&["cleanup", ns.as_str()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is in use") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    assert!(err.contains("--force"), "says what to do next: {err}");
    let (code, _, err) = sfb(&["cleanup", "--dry-run", ns.as_str()]);
    assert_eq!(code, 1, "a dry run refuses what the real run would");
    assert!(err.contains("is in use"), "{err}");
    assert_eq!(ns.files().len(), 2);
    let (code, out, err) = sfb(&["cleanup", "--force", "--dry-run", ns.as_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would remove namespace"), "{out}");
    assert_eq!(ns.files().len(), 2);
    let (code, out, err) = sfb(&["cleanup", "--force", ns.as_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 2 file(s)"), "{out}");
    assert!(ns.files().is_empty());
    drop(store);
}

#[test]
fn completions_are_generated_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, out, err) = sfb(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("sfb") && out.contains("cleanup"),
            "{shell}: {out}"
        );
    }
    let (code, _, err) = sfb(&["completions", "no-such-shell"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1_saying_what_to_do() {
    for args in [
        &["no-such-command"][..],
        &["stat"],
        &["cleanup"],
        &["cleanup", "--dead", "some-ns"],
        &["cleanup", "--dead", "--force"],
        &["stat", "x", "--count", "2"],
        &["stat", "x", "--watch", "--interval", "0"],
        &["stat", "x", "--watch", "--interval", "soon"],
        &["stat", "x", "--watch", "--count", "0"],
    ] {
        let (code, _, err) = sfb(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("Usage") || err.contains("--help"),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = sfb(&["cleanup", "../etc"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid namespace") && err.contains("use 1-64"),
        "{err}"
    );
    let (code, _, err) = sfb(&["stat", "../etc"]);
    assert_eq!(code, 1, "{err}");
    let missing = Ns::new("cli-missing");
    let (code, _, err) = sfb(&["stat", missing.as_str()]);
    assert_eq!(code, 1);
    assert!(err.contains("run `sfb list`"), "{err}");
    let nowhere = Path::new("/nonexistent-sfb-dir");
    for args in [&["list"][..], &["cleanup", "--dead"]] {
        let r = sfb_in(Some(nowhere), args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(r.err.contains("SFB_SHM_DIR"), "{args:?}: {}", r.err);
    }
    let (code, out, _) = sfb(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Exit codes: 0 success, 1 operation failed, 2 usage error"));
}

#[test]
fn bench_runs_the_selected_cells_and_prints_the_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_sfb"))
        .args([
            "bench",
            "--quick",
            "--only",
            "memcpy bound 64 B",
            "append cold 64 B",
            "full cycle 64 B",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| workload | payload | threads |"),
        "{stdout}"
    );
    for row in [
        "| memcpy bound | 64 B |",
        "| append | 64 B | 1 | cold |",
        "| full cycle, 2 processes | 64 B |",
    ] {
        assert!(stdout.contains(row), "missing {row}: {stdout}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sfb"))
        .args(["bench", "--only", "no such cell"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn stat_and_list_show_each_channel_with_its_live_and_dead_participants() {
    let ns = Ns::new("cli-chan");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    let jobs_cfg = stable_fragmented_buffer::ChannelConfig::default()
        .delivery(stable_fragmented_buffer::Delivery::AtLeastOnce)
        .max_held(5);
    let tx = store.sender_with("jobs", jobs_cfg).unwrap();
    let rx = store.receiver("jobs").unwrap();
    let _sub = store.subscriber("ticks").unwrap();
    for i in 0..4 {
        tx.send(&payload(i, 100)).unwrap();
    }
    let held = rx.recv().unwrap(); // one held: out of the ring
    let stat = sfb_in(None, &["stat", "--json", ns.as_str()]);
    assert_eq!(stat.code, 0, "{}", stat.err);
    let v = stat.json();
    let chans = v["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 2, "{v}");
    let jobs = chans.iter().find(|c| c["name"] == "jobs").unwrap();
    assert_eq!(jobs["kind"], "work queue");
    assert_eq!(jobs["depth"], 3);
    assert_eq!(jobs["held"], 1);
    assert_eq!(jobs["published"], 4);
    assert_eq!(jobs["delivery"], "at-least-once");
    assert_eq!(jobs["max_held"], 5);
    assert_eq!(jobs["lagged"], 0);
    assert_eq!(jobs["producers_alive"], 1);
    assert_eq!(jobs["consumers_alive"], 1);
    let ticks = chans.iter().find(|c| c["name"] == "ticks").unwrap();
    assert_eq!(ticks["kind"], "broadcast channel");
    assert_eq!(ticks["overflow"], "drop-oldest");
    assert_eq!(ticks["producers_alive"], 0);
    assert_eq!(ticks["consumers_alive"], 1);
    let text = sfb_in(None, &["stat", ns.as_str()]);
    assert!(
        text.out.contains("channels:")
            && text.out.contains("jobs")
            && text.out.contains("at-least-once, held <= 5")
            && text.out.contains("drop-oldest, held <= 16"),
        "{}",
        text.out
    );
    // Channel files belong to the namespace, not to "other programs".
    let list = sfb_in(None, &["list", "--json"]).json();
    let n = listed(&list, ns.as_str());
    assert!(n["files"].to_string().contains("_chan+jobs"), "{n}");
    assert!(!list["other_files"].to_string().contains("_chan+"));
    drop(held);
}

/// `sfb export --prometheus` is valid exposition text (parsed by a
/// Prometheus parser) with the gauges and counters of a live store with a
/// channel, and of a dead one.
#[test]
fn export_prometheus_reports_every_namespace_in_the_text_format() {
    let live = Ns::new("cli-prom");
    let store = PinnedBlobStore::new_shared(Config::default(), live.as_str(), CHUNK).unwrap();
    let publisher = store.publisher("frames").unwrap();
    let subscriber = store.subscriber("frames").unwrap();
    for i in 0..3u8 {
        publisher.send(&[i; 100]).unwrap();
    }
    let dead = Ns::new("cli-prom-dead");
    let mut creator = start_creator(dead.as_str(), None);
    creator.kill9();

    let r = sfb_in(None, &["export", "--prometheus"]);
    assert_eq!(r.code, 0, "{}", r.err);
    let scrape = prometheus_parse::Scrape::parse(r.out.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not exposition text: {e}\n{}", r.out));
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        let found: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{metric} {labels:?} in\n{}", r.out);
        match found[0].value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{metric}: {other:?}"),
        }
    };
    let ns = [("namespace", live.as_str())];
    assert!(value("sfb_namespace_chunk_files", &ns) >= 1.0);
    assert!(value("sfb_namespace_tmpfs_bytes", &ns) > 0.0);
    assert_eq!(value("sfb_namespace_creator_alive", &ns), 1.0);
    assert_eq!(value("sfb_namespace_healthy", &ns), 1.0);
    assert_eq!(value("sfb_namespace_max_chunks", &ns), 0.0);
    assert_eq!(value("sfb_namespace_expired_total", &ns), 0.0);
    let ch = [("namespace", live.as_str()), ("channel", "frames")];
    assert_eq!(value("sfb_channel_depth", &ch), 3.0, "nothing received yet");
    assert_eq!(value("sfb_channel_published_total", &ch), 3.0);
    assert_eq!(value("sfb_channel_held", &ch), 0.0);
    assert_eq!(value("sfb_channel_lagged_total", &ch), 0.0);
    assert_eq!(value("sfb_channel_redelivered_total", &ch), 0.0);
    assert_eq!(value("sfb_channel_evicted_total", &ch), 0.0);
    assert_eq!(value("sfb_channel_skipped_total", &ch), 0.0);
    let role = |r: &'static str, s: &'static str| {
        value(
            "sfb_channel_participants",
            &[ch[0], ch[1], ("role", r), ("state", s)],
        )
    };
    assert_eq!(
        (role("producer", "alive"), role("consumer", "alive")),
        (1.0, 1.0)
    );
    assert_eq!(
        value(
            "sfb_namespace_creator_alive",
            &[("namespace", dead.as_str())]
        ),
        0.0
    );
    assert!(scrape.docs.contains_key("sfb_channel_depth"));
    drop((subscriber, publisher));
}

/// `sfb export --prometheus`, parsed as a Prometheus server would, with
/// its text (for messages).
fn scrape() -> (prometheus_parse::Scrape, String) {
    let r = sfb_in(None, &["export", "--prometheus"]);
    assert_eq!(r.code, 0, "{}", r.err);
    let scrape = prometheus_parse::Scrape::parse(r.out.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not exposition text: {e}\n{}", r.out));
    (scrape, r.out)
}

/// The samples of `metric` whose labels include `labels`.
fn samples(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{metric}: {other:?}"),
        })
        .collect()
}

/// The one sample of `metric` with `labels`.
fn sample(
    scrape: &(prometheus_parse::Scrape, String),
    metric: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let found = samples(&scrape.0, metric, labels);
    assert_eq!(found.len(), 1, "{metric} {labels:?} in\n{}", scrape.1);
    found[0]
}

/// Channel `chan` of `sfb stat --json NS`, polled until `ready` holds of
/// it (for at most 20 s).
fn chan_when(ns: &Ns, chan: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let t = std::time::Instant::now();
    loop {
        let v = sfb_in(None, &["stat", "--json", ns.as_str()]).json();
        let c = v["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == chan)
            .unwrap_or_else(|| panic!("no channel {chan}: {v:#}"))
            .clone();
        if ready(&c) {
            return c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "channel {chan} never got there: {c:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The participant of channel report `c` whose pid is `pid`.
fn participant(c: &Value, pid: u32) -> &Value {
    c["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no participant {pid}: {c:#}"))
}

/// A subscriber process stopped with SIGSTOP holds a `Block` broadcast
/// back: `sfb stat` (JSON, text, watch) and `sfb export` name it, with its
/// lag, and show the publisher process waiting; once it is SIGKILLed the
/// waiting publisher evicts it, and the last eviction names it.
#[test]
fn stat_and_export_name_the_stopped_subscriber_holding_a_block_channel_back() {
    let ns = Ns::new("cli-held");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    // Nobody subscribes to this one: what it publishes is unheard.
    let lonely = store.publisher("lonely").unwrap();
    for i in 0..3u8 {
        lonely.send(&[i; 10]).unwrap();
    }
    let mut fast = start_chan_peer("chan-consumer", &ns, "broadcast", "frames", 0);
    let mut stopped = start_chan_peer("chan-consumer", &ns, "broadcast", "frames", 0);
    sigstop(&stopped);
    let mut publisher = start_chan_peer("chan-producer", &ns, "broadcast", "frames", 24);
    let (fast_pid, stopped_pid, pub_pid) =
        (fast.child.id(), stopped.child.id(), publisher.child.id());

    // A ring's worth (16), then the publisher waits for the stopped one.
    let c = chan_when(&ns, "frames", |c| {
        c["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["waiting_ms"].as_u64().is_some_and(|w| w >= 300))
    });
    assert_eq!(c["overflow"], "block");
    assert_eq!(c["published"], 16);
    assert_eq!(c["depth"], 16);
    assert!(c["blocked_ms"].as_u64().unwrap() >= 300, "{c:#}");
    let h = &c["held_back_by"];
    assert_eq!(h["pid"], stopped_pid, "{c:#}");
    assert_eq!(h["endpoint"], "subscriber");
    assert_eq!(h["lag"], 16);
    assert_eq!(h["alive"], true);
    let p = participant(&c, pub_pid);
    assert_eq!(
        (&p["role"], &p["endpoint"], &p["alive"], &p["count"]),
        (
            &"producer".into(),
            &"publisher".into(),
            &true.into(),
            &16.into()
        )
    );
    assert!(p["waiting_ms"].as_u64().unwrap() >= 300, "{p:#}");
    assert!(p["record"].as_u64().unwrap() < 32);
    let s = participant(&c, stopped_pid);
    assert_eq!(
        (&s["lag"], &s["count"], &s["held"]),
        (&16.into(), &0.into(), &0.into())
    );
    assert_eq!(s["endpoint"], "subscriber");
    assert!(s["record"].as_u64().unwrap() >= 32);
    assert_eq!(s["waiting_ms"], Value::Null);
    let f = participant(&c, fast_pid);
    assert_eq!((&f["lag"], &f["count"]), (&0.into(), &16.into()));
    assert_eq!(
        (c["producers_alive"].as_u64(), c["consumers_alive"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(c["last_eviction"], Value::Null);
    // The bound: the file with every pool slot backed, and one 64 KiB chunk
    // per pool slot (the namespace has no chunk limit).
    let pool = c["pool"].as_u64().unwrap();
    assert_eq!(pool, 16 + 32 * 17 + 64);
    let bound = c["memory_bound"].as_u64().unwrap();
    let file_max = 5120 + 16 * 16 + pool * (64 + c["slot_size"].as_u64().unwrap());
    assert!(
        bound >= pool * CHUNK as u64 + c["tmpfs_bytes"].as_u64().unwrap(),
        "{bound}"
    );
    assert!(bound <= pool * CHUNK as u64 + file_max, "{bound}");

    let text = sfb_in(None, &["stat", ns.as_str()]);
    assert_eq!(text.code, 0, "{}", text.err);
    let out = &text.out;
    let alert = out
        .lines()
        .find(|l| l.starts_with("chan \"frames\": producers blocked "))
        .unwrap_or_else(|| panic!("no alert:\n{out}"));
    assert!(
        alert.ends_with(&format!(
            ", held back by subscriber pid {stopped_pid} (lag 16)"
        )),
        "{alert}"
    );
    assert!(
        out.contains("channel frames (broadcast channel, block, held <= 16"),
        "{out}"
    );
    assert!(
        out.contains(
            "published 16, lagged 0, evicted 0, expired 0, skipped 0, redelivered 0, unheard 0"
        ),
        "{out}"
    );
    assert!(out.contains(&format!("({bound} B;")), "{out}");
    assert!(out.contains("unheard 3"), "the lonely channel's: {out}");
    // The bound the publishers compute themselves.
    let l = chan_when(&ns, "lonely", |_| true);
    assert_eq!(l["memory_bound"], lonely.memory_bound(), "{l:#}");
    assert_eq!(
        (&l["unheard"], &l["expired"]),
        (&3.into(), &0.into()),
        "{l:#}"
    );
    let row = |pid: u32| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(&pid.to_string()))
            .unwrap_or_else(|| panic!("no row of {pid}:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    for col in ["REC", "PID", "ROLE", "STATE", "LAG", "HELD", "WAITING"] {
        assert!(out.contains(col), "{col}: {out}");
    }
    let r = row(stopped_pid);
    assert_eq!(&r[2..5], ["subscriber", "alive", "16"], "{r:?}");
    assert!(r.ends_with(&["holds", "producers", "back"]), "{r:?}");
    let r = row(pub_pid);
    assert_eq!(&r[2..4], ["publisher", "alive"], "{r:?}");
    assert!(r[8].ends_with('s') && r[8] != "-", "waiting: {r:?}");
    let r = row(fast_pid);
    assert_eq!(&r[2..5], ["subscriber", "alive", "0"], "{r:?}");

    let watch = sfb_in(
        None,
        &[
            "stat",
            ns.as_str(),
            "--watch",
            "--interval",
            "50ms",
            "--count",
            "2",
        ],
    );
    assert_eq!(watch.code, 0, "{}", watch.err);
    let held = format!("held back by subscriber pid {stopped_pid} (lag 16)");
    assert_eq!(
        watch.out.matches(&held).count(),
        2 * 2,
        "alert and detail per frame: {}",
        watch.out
    );
    assert!(!watch.out.contains('\x1b'), "not a terminal: plain text");

    let prom = scrape();
    let ch = [("namespace", ns.as_str()), ("channel", "frames")];
    let pids = [fast_pid, stopped_pid, pub_pid].map(|p| p.to_string());
    let who = |pid: u32| {
        let mut l = ch.to_vec();
        l.push(("pid", pids.iter().find(|p| **p == pid.to_string()).unwrap()));
        l
    };
    assert_eq!(
        sample(&prom, "sfb_channel_participant_lag", &who(stopped_pid)),
        16.0
    );
    assert_eq!(
        sample(&prom, "sfb_channel_participant_lag", &who(fast_pid)),
        0.0
    );
    assert_eq!(
        sample(
            &prom,
            "sfb_channel_participant_holding_back",
            &who(stopped_pid)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &prom,
            "sfb_channel_participant_holding_back",
            &who(fast_pid)
        ),
        0.0
    );
    assert_eq!(
        sample(&prom, "sfb_channel_participant_held", &who(stopped_pid)),
        0.0
    );
    assert_eq!(
        sample(&prom, "sfb_channel_participant_alive", &who(stopped_pid)),
        1.0
    );
    assert_eq!(
        sample(&prom, "sfb_channel_participant_alive", &who(pub_pid)),
        1.0
    );
    let mut l = who(pub_pid);
    l.push(("role", "producer"));
    let waiting = sample(&prom, "sfb_channel_participant_waiting_seconds", &l);
    assert!((0.3..60.0).contains(&waiting), "seconds: {waiting}");
    let mut l = who(stopped_pid);
    l.push(("role", "consumer"));
    assert!(samples(&prom.0, "sfb_channel_participant_waiting_seconds", &l).is_empty());
    let blocked = sample(&prom, "sfb_channel_blocked_seconds", &ch);
    assert!((0.3..60.0).contains(&blocked), "seconds: {blocked}");
    assert_eq!(
        sample(&prom, "sfb_channel_memory_bound_bytes", &ch),
        bound as f64
    );
    assert_eq!(sample(&prom, "sfb_channel_published_total", &ch), 16.0);
    for zero in [
        "sfb_channel_lagged_total",
        "sfb_channel_evicted_total",
        "sfb_channel_expired_total",
        "sfb_channel_skipped_total",
        "sfb_channel_redelivered_total",
        "sfb_channel_unheard_total",
    ] {
        assert_eq!(sample(&prom, zero, &ch), 0.0, "{zero}");
    }
    let lonely_ch = [("namespace", ns.as_str()), ("channel", "lonely")];
    assert_eq!(sample(&prom, "sfb_channel_unheard_total", &lonely_ch), 3.0);
    assert_eq!(
        sample(&prom, "sfb_channel_blocked_seconds", &lonely_ch),
        0.0
    );

    // Killed while stopped: the waiting publisher evicts it, and sends on.
    let before_kill = now_unix_ms();
    stopped.kill9();
    publisher.expect("sent 24");
    let c = chan_when(&ns, "frames", |c| c["published"] == 24);
    let e = &c["last_eviction"];
    assert_eq!(e["pid"], stopped_pid, "{c:#}");
    assert_eq!(
        (&e["role"], &e["endpoint"]),
        (&"consumer".into(), &"subscriber".into())
    );
    let at = e["unix_ms"].as_u64().unwrap();
    assert!(at >= before_kill && at <= now_unix_ms(), "{at}");
    assert_eq!(c["evicted"], 1);
    assert_eq!(c["held_back_by"], Value::Null);
    assert_eq!(c["blocked_ms"], Value::Null);
    assert!(c["participants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["pid"] != stopped_pid));
    let text = sfb_in(None, &["stat", ns.as_str()]).out;
    assert!(
        text.contains(&format!("last eviction  subscriber pid {stopped_pid}, ")),
        "{text}"
    );
    assert!(!text.contains("producers blocked"), "{text}");
    let prom = scrape();
    assert_eq!(sample(&prom, "sfb_channel_evicted_total", &ch), 1.0);
    assert!(samples(&prom.0, "sfb_channel_participant_alive", &who(stopped_pid)).is_empty());

    release(publisher);
    assert_eq!(fast.line().as_deref(), Some("got 24"));
    fast.wait_ok();
    drop((lonely, store));
}

/// A receiver process stopped with SIGSTOP holds a work queue back: its
/// sender waits, and `sfb stat` names the receiver. Once the sender is
/// SIGKILLed (nobody is left to evict it) it shows dead, not yet evicted,
/// and nobody is blocked any more, though the queue stays full.
#[test]
fn stat_names_the_stopped_receiver_holding_a_work_queue_back() {
    let ns = Ns::new("cli-held-q");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), CHUNK).unwrap();
    let stopped = start_chan_peer("chan-consumer", &ns, "queue", "jobs", 0);
    sigstop(&stopped);
    let mut sender = start_chan_peer("chan-producer", &ns, "queue", "jobs", 20);
    let c = chan_when(&ns, "jobs", |c| {
        c["blocked_ms"].as_u64().is_some_and(|w| w >= 200)
    });
    assert_eq!(c["kind"], "work queue");
    assert_eq!(c["depth"], 16);
    let h = &c["held_back_by"];
    assert_eq!(h["pid"], stopped.child.id(), "{c:#}");
    assert_eq!(h["endpoint"], "receiver");
    assert_eq!(h["lag"], Value::Null);
    assert!(h["idle_ms"].as_u64().unwrap() >= 200, "{c:#}");
    let r = participant(&c, stopped.child.id());
    assert_eq!(r["lag"], Value::Null, "a receiver has no lag of its own");
    let s = participant(&c, sender.child.id());
    assert_eq!(s["endpoint"], "sender");
    assert!(s["waiting_ms"].as_u64().unwrap() >= 200, "{c:#}");
    let out = sfb_in(None, &["stat", ns.as_str()]).out;
    assert!(
        out.contains(&format!(
            ", held back by receiver pid {} (idle ",
            stopped.child.id()
        )),
        "{out}"
    );

    let sender_pid = sender.child.id();
    sender.kill9();
    let c = chan_when(&ns, "jobs", |c| c["producers_dead"] == 1);
    let s = participant(&c, sender_pid);
    assert_eq!(
        (&s["alive"], &s["waiting_ms"]),
        (&false.into(), &Value::Null),
        "{c:#}"
    );
    assert_eq!(c["producers_alive"], 0);
    assert_eq!(
        (&c["blocked_ms"], &c["held_back_by"]),
        (&Value::Null, &Value::Null),
        "{c:#}"
    );
    assert!(c["full_for_ms"].as_u64().is_some(), "still full: {c:#}");
    let out = sfb_in(None, &["stat", ns.as_str()]).out;
    assert!(!out.contains("producers blocked"), "{out}");
    assert!(
        out.contains("not blocked (no producer alive; the ring has been full for "),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&sender_pid.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains(" sender ") && row.contains(" dead ") && row.ends_with("not yet evicted"),
        "{row}"
    );
    let prom = scrape();
    let pid = sender_pid.to_string();
    let l = [
        ("namespace", ns.as_str()),
        ("channel", "jobs"),
        ("pid", pid.as_str()),
    ];
    assert_eq!(sample(&prom, "sfb_channel_participant_alive", &l), 0.0);
    assert_eq!(
        sample(&prom, "sfb_channel_participant_waiting_seconds", &l),
        0.0
    );
    drop((stopped, store));
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
