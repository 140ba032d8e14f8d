//! One driver per interface: an `afpacket:` link holds a lock on its interface for as long as
//! it lives, so a second driver on the same interface (another `netmux up` with another
//! runtime directory, say) is refused by name instead of running beside the first and
//! answering the same ARP requests and connections.
//!
//! The lock is a listening Unix socket in the abstract namespace, named after the interface.
//! Abstract names belong to the network namespace, as interface names do, so drivers in
//! different namespaces never collide; the kernel drops the name when the holder exits however
//! it ends, so no stale lock outlives a crash; and a refused driver learns the holder's pid by
//! connecting to it (`SO_PEERCRED`).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

use super::LinkError;

/// Held while a driver owns an interface; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct InterfaceLock {
    _listener: UnixListener,
}

/// The abstract socket name of `ifname`'s lock.
fn lock_name(ifname: &str) -> String {
    format!("netmux/link/{ifname}")
}

impl InterfaceLock {
    /// Takes `ifname`'s lock, or says which process holds it.
    pub fn acquire(ifname: &str) -> Result<InterfaceLock, LinkError> {
        let name = lock_name(ifname);
        let address = SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| LinkError::io(format!("naming the lock of {ifname}"), e))?;
        match UnixListener::bind_addr(&address) {
            Ok(listener) => Ok(InterfaceLock {
                _listener: listener,
            }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let holder = UnixStream::connect_addr(&address)
                    .ok()
                    .and_then(|s| rustix::net::sockopt::socket_peercred(&s).ok())
                    .map(|cred| format!(" (pid {})", cred.pid.as_raw_nonzero()))
                    .unwrap_or_default();
                Err(LinkError::io(
                    format!("taking interface {ifname} for this driver"),
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "another netmux driver{holder} already owns it in this network \
                             namespace; stop that one first (two would answer for the same \
                             addresses)"
                        ),
                    ),
                ))
            }
            Err(e) => Err(LinkError::io(format!("taking interface {ifname}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_interface_is_refused_naming_the_holder_and_freed_on_drop() {
        // A name no real interface has (at most 15 bytes there), unique to this test run.
        let ifname = format!("test-lock-{}", std::process::id());
        let first = InterfaceLock::acquire(&ifname).unwrap();
        let e = InterfaceLock::acquire(&ifname).unwrap_err().to_string();
        assert!(e.contains(&ifname), "{e}");
        assert!(
            e.contains(&format!("pid {}", std::process::id())),
            "the holder is named: {e}"
        );
        assert!(InterfaceLock::acquire(&format!("{ifname}-other")).is_ok());
        drop(first);
        InterfaceLock::acquire(&ifname).expect("free again once dropped");
    }
}
