//! `sfb-bridge`: joins a namespace of this host to other hosts over Zenoh.
//!
//! ```text
//! host A: sfb-bridge --namespace cams --export frames --listen tcp/10.0.0.1:7447 --no-multicast-scouting
//! host B: sfb-bridge --namespace cams --import sfb/cams/frames=frames --connect tcp/10.0.0.1:7447 --no-multicast-scouting
//! ```
//!
//! It attaches to the namespace (waiting for its creator), prints `ready`
//! once its exports and imports are declared, and runs until it is killed.

use clap::Parser;
use sfb_bridge::{default_key, loopback_config, Bridge};
use stable_fragmented_buffer::{Config, PinnedBlobStore};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Bridges channels of a namespace to other hosts over Zenoh.
#[derive(Parser, Debug)]
#[command(name = "sfb-bridge", version)]
struct Args {
    /// The namespace whose channels are bridged (attached, not created).
    #[arg(long)]
    namespace: String,
    /// Publishes local broadcast CHANNEL on KEY (default `sfb/NS/CHANNEL`).
    #[arg(long, value_name = "CHANNEL[=KEY]")]
    export: Vec<String>,
    /// Publishes what arrives on KEY into local CHANNEL (default: the last
    /// part of KEY).
    #[arg(long, value_name = "KEY[=CHANNEL]")]
    import: Vec<String>,
    /// A Zenoh endpoint to connect to (`tcp/HOST:PORT`); repeatable.
    #[arg(long)]
    connect: Vec<String>,
    /// A Zenoh endpoint to listen on (`tcp/HOST:PORT`); repeatable.
    #[arg(long)]
    listen: Vec<String>,
    /// Turns off Zenoh's multicast scouting and gossip: the bridge talks only
    /// to the endpoints given.
    #[arg(long)]
    no_multicast_scouting: bool,
    /// How long to wait for the namespace to exist, in seconds.
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let wait = Duration::try_from_secs_f64(args.wait).map_err(|e| format!("--wait: {e}"))?;
    let store = Arc::new(PinnedBlobStore::attach_shared_wait(
        Config::default(),
        &args.namespace,
        wait,
    )?);
    let config = loopback_config(&args.listen, &args.connect, args.no_multicast_scouting)?;
    let mut bridge = Bridge::new(Arc::clone(&store), config)?;
    for e in &args.export {
        let (channel, key) = match e.split_once('=') {
            Some((c, k)) => (c.to_owned(), k.to_owned()),
            None => (e.clone(), default_key(&args.namespace, e)),
        };
        bridge.export(&channel, &key)?;
    }
    for i in &args.import {
        let (key, channel) = match i.split_once('=') {
            Some((k, c)) => (k.to_owned(), c.to_owned()),
            None => (i.clone(), i.rsplit('/').next().unwrap_or(i).to_owned()),
        };
        bridge.import(&key, &channel)?;
    }
    println!("ready {}", bridge.id());
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sfb-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}
