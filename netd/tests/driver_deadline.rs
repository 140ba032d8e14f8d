//! A driver that is alive but does not answer (stopped, wedged) costs only the requests that
//! wait for it, and only until the deadline: netd's state is never locked across a driver
//! round trip, other clients are served meanwhile, and a missed deadline declares the driver
//! gone, which every client is then told.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use netmux_client::blocking::Client;
use netmux_client::{ClientError, Transport};
use netmux_netd::config::{Config, HostAddrs};
use netmux_netd::driver_link::{CreatedQueue, DriverError, DriverLink, DriverStats, FilterSpec};
use netmux_proto::driver::{FilterId, InstanceId, InstanceInfo, QueueConfig, QueueId};
use netmux_proto::{ErrorCode, LinkInfo};

/// A driver that accepts the host's addresses and then never answers anything, until the
/// test ends (the gate opens).
#[derive(Clone, Default)]
struct Wedged {
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Wedged {
    fn stall<T>(&self) -> Result<T, DriverError> {
        let (open, cv) = &*self.gate;
        let mut g = open.lock().unwrap();
        while !*g {
            g = cv.wait(g).unwrap();
        }
        Err(DriverError::Gone("released at the end of the test".into()))
    }

    fn release(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

impl DriverLink for Wedged {
    fn link_info(&self) -> LinkInfo {
        LinkInfo {
            mac: MAC_A,
            mtu: 1500,
        }
    }
    fn create_queue(
        &mut self,
        _: QueueId,
        _: QueueConfig,
        _: InstanceId,
    ) -> Result<CreatedQueue, DriverError> {
        self.stall()
    }
    fn set_instance(&mut self, _: InstanceInfo) -> Result<(), DriverError> {
        self.stall()
    }
    fn remove_instance(&mut self, _: InstanceId) -> Result<(), DriverError> {
        self.stall()
    }
    fn destroy_queue(&mut self, _: QueueId) -> Result<(), DriverError> {
        self.stall()
    }
    fn resize_queue(&mut self, _: QueueId, _: QueueConfig) -> Result<CreatedQueue, DriverError> {
        self.stall()
    }
    fn install_filter(&mut self, _: &FilterSpec) -> Result<(), DriverError> {
        self.stall()
    }
    fn remove_filter(&mut self, _: QueueId, _: FilterId) -> Result<(), DriverError> {
        self.stall()
    }
    fn stats(&mut self) -> Result<DriverStats, DriverError> {
        self.stall()
    }
    fn set_netd_queue(&mut self, _: QueueId) -> Result<(), DriverError> {
        Ok(())
    }
    fn set_host_addresses(&mut self, _: Vec<[u8; 4]>) -> Result<(), DriverError> {
        Ok(())
    }
}

fn code(e: ClientError) -> ErrorCode {
    e.refusal().map(|r| r.code).unwrap_or(ErrorCode::Internal)
}

#[test]
fn a_driver_that_does_not_answer_delays_only_its_request_and_is_declared_gone() {
    const DEADLINE: Duration = Duration::from_millis(300);
    let wedged = Wedged::default();
    let dir = netmux_testkit::TempDir::new("netmux-netd-deadline");
    let mut config = Config::new(dir.join("netd"));
    config.addrs = HostAddrs {
        ipv4: Some((IP_A, 24)),
        gateway: None,
        ipv6_link_local: false,
    };
    config.host_stack = false;
    config.driver_timeout = DEADLINE;
    let netd = netmux_netd::spawn(config, Box::new(wedged.clone())).expect("netd starts");
    let socket = netd.socket_path().to_owned();

    let waiting = std::thread::spawn({
        let socket = socket.clone();
        move || {
            let mut a = Client::connect_socket(&socket).unwrap();
            let start = Instant::now();
            let r = a.bind_port(Transport::Udp, 5000);
            (r.map_err(code), start.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    // Meanwhile another client is served at once: nothing holds netd while it waits.
    let start = Instant::now();
    let b = Client::connect_socket(&socket);
    assert!(b.is_ok(), "{b:?}");
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );

    let (result, waited) = waiting.join().unwrap();
    assert_eq!(result, Err(ErrorCode::Driver));
    // The deadline for one batch: one timeout per command and per batch ahead, plus a second.
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    eprintln!("a request to a wedged driver was answered after {waited:?}");

    // The driver is gone now: new clients are told so.
    assert!(eventually(Duration::from_secs(2), || matches!(
        Client::connect_socket(&socket).map_err(code),
        Err(ErrorCode::Driver)
    )));
    wedged.release();
}
