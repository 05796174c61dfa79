//! Two "hosts" on one machine: two shm directories, each with its own
//! application process and its own `sfb-bridge` process, joined by Zenoh
//! over TCP on 127.0.0.1 (one bridge listens, the other connects; multicast
//! scouting off). Nothing is sent beyond the loopback address.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stable_fragmented_buffer::{
    ChannelConfig, Config, Overflow, PinnedBlobStore, RecvTimeoutError,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A host: a directory of its own under the shm directory, removed (with
/// everything in it) on drop.
struct Host {
    dir: PathBuf,
}

impl Host {
    fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from("/dev/shm").join(format!("sfbt-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Host { dir }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process whose stdout lines arrive on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { return };
                // libtest may print before our marker on the same line.
                if let Some(at) = l.find("SFB ") {
                    if tx.send(l[at + 4..].to_owned()).is_err() {
                        return;
                    }
                } else if l.starts_with("ready ") && tx.send(l).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no line from {} within {within:?}: {e}", self.child.id()))
    }

    fn say(&mut self, s: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{s}").unwrap();
        stdin.flush().unwrap();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bridge(host: &Host, ns: &str, args: &[String]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfb-bridge"));
    cmd.env("SFB_SHM_DIR", &host.dir)
        .args(["--namespace", ns, "--no-multicast-scouting"])
        .args(args);
    let p = Proc::spawn(cmd);
    let l = p.line(Duration::from_secs(30));
    assert!(l.starts_with("ready "), "bridge said {l:?}");
    p
}

fn app(host: &Host, ns: &str, role: &str, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "peer_process_entry_point",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SFB_SHM_DIR", &host.dir)
    .env("SFB_ROLE", role)
    .env("SFB_NS", ns);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(cmd)
}

fn say(s: &str) {
    println!("SFB {s}");
}

fn stdin_line() -> String {
    let mut l = String::new();
    std::io::stdin().read_line(&mut l).unwrap();
    l.trim().to_owned()
}

/// Message `seq` of `len` bytes (at least 1): content derived from both.
fn message(seq: u32, len: usize) -> Vec<u8> {
    let mut x = (seq as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The applications' channel: lossless (`Block`), so that the bridges'
/// local subscribers and the applications' never lag (the bridge applies
/// each host's overflow policy; under the default, `DropOldest`, a slow
/// reader would skip messages, as it would without a bridge).
fn lossless() -> ChannelConfig {
    ChannelConfig::default().overflow(Overflow::Block)
}

/// Sizes from 1 B to 8 MiB, inline and through the store on each side.
const SIZES: [usize; 7] = [1, 100, 4096, 65_536, 1 << 20, (1 << 20) + 1, 8 << 20];

/// Not a test of its own: the entry point of the application processes.
#[test]
#[ignore = "not a test: the entry point of this file's application processes"]
fn peer_process_entry_point() {
    let Ok(role) = std::env::var("SFB_ROLE") else {
        return;
    };
    let ns = std::env::var("SFB_NS").unwrap();
    let store = PinnedBlobStore::new_shared(Config::default(), &ns, 32 << 20).unwrap();
    match role.as_str() {
        // Creates the namespace and a publisher; on "probe" sends probes
        // (empty messages) until "go", then message i of every size in
        // SIZES for i in 0..count, then waits for "exit".
        "publisher" => {
            let tx = store.publisher_with("frames", lossless()).unwrap();
            let sub = store.subscriber_with("frames", lossless()).unwrap();
            say("ready");
            assert_eq!(stdin_line(), "probe");
            let (go_tx, go) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = go_tx.send(stdin_line());
            });
            while go.recv_timeout(Duration::from_millis(20)).is_err() {
                tx.send(b"").unwrap();
            }
            let count: u32 = std::env::var("SFB_COUNT").unwrap().parse().unwrap();
            for i in 0..count {
                for &len in &SIZES {
                    tx.send(&message(i, len)).unwrap();
                }
            }
            say("sent");
            // Its own subscriber: everything once (no echo from the
            // bridges), probes aside.
            let mut own = 0;
            while let Ok(m) = sub.recv_timeout(Duration::from_secs(2)) {
                if !m.is_empty() {
                    own += 1;
                }
            }
            say(&format!("own {own}"));
            drop(tx);
            stdin_line();
        }
        // Creates the namespace and subscribes; says "probed" at the first
        // probe, then checks every message byte-exact and in order and
        // reports "got N" after 3 s without one.
        "subscriber" => {
            let sub = store.subscriber_with("frames", lossless()).unwrap();
            say("ready");
            // Until the first probe (a bridge killed meanwhile leaves the
            // channel without a producer: disconnected until the next).
            let t = Instant::now();
            loop {
                assert!(t.elapsed() < Duration::from_secs(60), "no probe");
                match sub.recv_timeout(Duration::from_millis(100)) {
                    Ok(m) if m.is_empty() => break,
                    Ok(_) => panic!("a message before the probes"),
                    Err(RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => {}
                }
            }
            say("probed");
            let mut got = 0u32;
            loop {
                match sub.recv_timeout(Duration::from_secs(3)) {
                    Ok(m) if m.is_empty() => continue,
                    Ok(m) => {
                        let i = got / SIZES.len() as u32;
                        let len = SIZES[(got % SIZES.len() as u32) as usize];
                        assert!(*m == message(i, len)[..], "message {got} ({len} B)");
                        got += 1;
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            say(&format!("got {got}"));
            stdin_line();
        }
        other => panic!("role {other}"),
    }
}

fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

/// Runs a publisher on host A and a subscriber on host B with the given
/// bridge arguments; returns what B got and what A's own subscriber saw.
fn across(ns_tag: &str, a_args: &[String], b_args: &[String], count: u32) -> (String, String) {
    let (a, b) = (Host::new("hosta"), Host::new("hostb"));
    let ns = format!("br{}{ns_tag}", COUNTER.fetch_add(1, Ordering::Relaxed));
    let env = [("SFB_COUNT", count.to_string())];
    let mut publisher = app(&a, &ns, "publisher", &env);
    let mut subscriber = app(&b, &ns, "subscriber", &env);
    publisher.line(Duration::from_secs(30));
    subscriber.line(Duration::from_secs(30));
    let _ba = bridge(&a, &ns, a_args);
    let _bb = bridge(&b, &ns, b_args);
    publisher.say("probe");
    assert_eq!(subscriber.line(Duration::from_secs(30)), "probed");
    publisher.say("go");
    assert_eq!(publisher.line(Duration::from_secs(60)), "sent");
    let got = subscriber.line(Duration::from_secs(60));
    let own = publisher.line(Duration::from_secs(60));
    publisher.say("exit");
    subscriber.say("exit");
    (got, own)
}

fn args(ns_tag_port: u16, listen: bool, spec: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
    v.push(if listen { "--listen" } else { "--connect" }.to_owned());
    v.push(endpoint(ns_tag_port));
    v
}

/// A broadcast exported on host A and imported on host B: B's subscriber
/// gets every message, 1 B to 8 MiB, byte-exact and in order.
#[test]
fn a_broadcast_crosses_to_another_host_byte_exact() {
    let port = free_port();
    let (got, own) = across(
        "x",
        &args(port, true, &["--export", "frames=sfb/demo/frames"]),
        &args(port, false, &["--import", "sfb/demo/frames=frames"]),
        3,
    );
    assert_eq!(got, format!("got {}", 3 * SIZES.len()));
    assert_eq!(own, format!("own {}", 3 * SIZES.len()));
}

/// Both hosts export and import the same channel on the same key: each
/// message reaches the other host once, and never comes back (no echo, no
/// loop between the bridges).
#[test]
fn a_channel_bridged_both_ways_carries_each_message_once() {
    let port = free_port();
    let spec = [
        "--export",
        "frames=sfb/both/frames",
        "--import",
        "sfb/both/frames=frames",
    ];
    let (got, own) = across("y", &args(port, true, &spec), &args(port, false, &spec), 2);
    assert_eq!(
        got,
        format!("got {}", 2 * SIZES.len()),
        "duplicates or losses on B"
    );
    assert_eq!(own, format!("own {}", 2 * SIZES.len()), "echo back to A");
}

/// A bridge killed (SIGKILL) and started again: messages published after
/// it is back cross again; local delivery never stopped.
#[test]
fn a_bridge_killed_and_restarted_carries_messages_again() {
    let (a, b) = (Host::new("hosta"), Host::new("hostb"));
    let ns = format!("br{}k", COUNTER.fetch_add(1, Ordering::Relaxed));
    let port = free_port();
    let env = [("SFB_COUNT", "1".to_owned())];
    let mut publisher = app(&a, &ns, "publisher", &env);
    let mut subscriber = app(&b, &ns, "subscriber", &env);
    publisher.line(Duration::from_secs(30));
    subscriber.line(Duration::from_secs(30));
    let _ba = bridge(&a, &ns, &args(port, true, &["--export", "frames"]));
    let mut bb = bridge(
        &b,
        &ns,
        &args(port, false, &["--import", &format!("sfb/{ns}/frames")]),
    );
    bb.kill();
    // Killed: host B's channel sees a dead producer, and nothing crosses.
    let t = Instant::now();
    let _bb = bridge(
        &b,
        &ns,
        &args(port, false, &["--import", &format!("sfb/{ns}/frames")]),
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    publisher.say("probe");
    assert_eq!(subscriber.line(Duration::from_secs(30)), "probed");
    publisher.say("go");
    assert_eq!(publisher.line(Duration::from_secs(60)), "sent");
    assert_eq!(
        subscriber.line(Duration::from_secs(60)),
        format!("got {}", SIZES.len())
    );
    publisher.say("exit");
    subscriber.say("exit");
}
