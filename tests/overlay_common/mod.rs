//! Shared by the root crate's overlay tests (`overlay`, `overlay_etcd`): an overlay made
//! through netd's API, an instance on it with a client bound to UDP 7, and frames sent and
//! received on those clients' queues.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use netmux_client::blocking::Client;
use netmux_client::{InstanceSpec, MacChoice, OverlaySpec, Transport};
use netmux_ring::ClientQueue;

/// Creates the temporary overlay `name` with `vni` on VXLAN port 4789 and the mapping service
/// `mapping` (`files:PATH`, `etcd:URL`) in the netd of `runtime_dir`.
pub fn create_overlay(runtime_dir: &Path, name: &str, vni: u32, mapping: &str) {
    Client::connect(runtime_dir)
        .unwrap()
        .create_overlay(OverlaySpec {
            name: name.into(),
            vni,
            port: 4789,
            mapping: mapping.into(),
            mtu: None,
            temporary: true,
        })
        .unwrap_or_else(|e| panic!("creating overlay {name}: {e}"));
}

/// Creates the temporary instance `name` (`mac`, `ip`/24) on `overlay` in the netd of
/// `runtime_dir`, and a client in it bound to UDP 7 with its queue.
pub fn join(
    runtime_dir: &Path,
    overlay: &str,
    name: &str,
    mac: [u8; 6],
    ip: [u8; 4],
) -> (Client, ClientQueue) {
    Client::connect(runtime_dir)
        .unwrap()
        .create_instance(InstanceSpec {
            overlay: Some(overlay.into()),
            ..InstanceSpec::temporary(name, MacChoice::Given(mac), (ip, 24))
        })
        .unwrap_or_else(|e| panic!("creating instance {name}: {e}"));
    let mut client = Client::connect_to(runtime_dir, Some(name)).unwrap();
    client.bind_port(Transport::Udp, 7).unwrap();
    let queue = client.open_queue().unwrap();
    (client, queue)
}

/// Sends `frame` on `q`, which must take it.
pub fn send(q: &mut ClientQueue, frame: &[u8]) {
    assert_eq!(q.send(&[&[frame]]).unwrap().sent, 1);
}

/// Frames `q` receives until `n` arrived or `timeout` passed.
pub fn recv(q: &mut ClientQueue, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if q.recv_owned(64, &mut out).unwrap() == 0 {
            let _ = q.wait_readable(Some(Duration::from_millis(10)));
        }
    }
    out
}

/// Sends `frame` from `from` until `to` receives `expect` (the first ones wait for the
/// mapping service and the underlay's ARP), at most for `wait`.
pub fn deliver(
    from: &mut ClientQueue,
    to: &mut ClientQueue,
    frame: &[u8],
    expect: &[u8],
    wait: Duration,
) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        send(from, frame);
        if recv(to, 1, Duration::from_millis(200))
            .iter()
            .any(|f| f == expect)
        {
            return;
        }
    }
    panic!("the frame never arrived");
}
