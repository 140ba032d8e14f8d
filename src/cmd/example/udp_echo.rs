//! The UDP echo example: every datagram received on the port goes back to its sender,
//! unchanged, from the host's own address (also when it was sent to a broadcast address).
//! Datagrams larger than the link's MTU (the driver reassembled them) go back as IPv4 or IPv6
//! fragments (smoltcp makes the IPv4 ones, the device the IPv6 ones), which the driver checks
//! as the whole datagram before sending them.
//!
//! With `--group`, it joins multicast groups on its port: netd then delivers the datagrams sent
//! to them (netd refuses an address that is no group, and more than its limit per session),
//! and the smoltcp interface accepts them; they are echoed from the host's own address.

use std::sync::atomic::AtomicBool;

use netmux_client::Transport;
use smoltcp::iface::SocketSet;
use smoltcp::socket::udp;

use super::{stopping, Station, UdpEchoArgs};

/// The largest UDP payload over IPv4: a 65,535-byte datagram less the IPv4 header (without
/// options) and the UDP header.
const MAX_IPV4_UDP_PAYLOAD: usize = 65_535 - 20 - 8;
/// The largest UDP payload over IPv6: a 65,535-byte payload length less the UDP header.
const MAX_IPV6_UDP_PAYLOAD: usize = 65_535 - 8;
/// Datagrams the socket holds in each direction.
const DATAGRAMS_BUFFERED: usize = 64;
/// Payload bytes the socket holds in each direction: room for a few datagrams of the largest
/// size IPv4 can reassemble.
const BYTES_BUFFERED: usize = 256 * 1024;

fn buffer() -> udp::PacketBuffer<'static> {
    udp::PacketBuffer::new(
        vec![udp::PacketMetadata::EMPTY; DATAGRAMS_BUFFERED],
        vec![0; BYTES_BUFFERED],
    )
}

/// Serves until `stop` is set or the queue closes.
pub fn serve(args: &UdpEchoArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut station = Station::open(&args.common, Transport::Udp)?;
    for &group in &args.group {
        let port = station.port;
        station
            .client
            .join_group(group, port)
            .map_err(super::refusal)?;
        station
            .iface
            .join_multicast_group(group)
            .map_err(|e| anyhow::anyhow!("joining {group} in the smoltcp interface: {e}"))?;
        tracing::info!(%group, port, "joined");
    }
    let mut sockets = SocketSet::new(vec![]);
    let mut socket = udp::Socket::new(buffer(), buffer());
    socket
        .bind(station.port)
        .map_err(|e| anyhow::anyhow!("binding the smoltcp socket: {e}"))?;
    let handle = sockets.add(socket);
    station.announce("udp")?;
    let mut echoed: u64 = 0;
    while !stopping(stop) {
        station.poll(&mut sockets);
        let socket = sockets.get_mut::<udp::Socket>(handle);
        while socket.can_recv() && socket.can_send() {
            let Ok((data, meta)) = socket.recv() else {
                break;
            };
            let data = data.to_vec();
            let max = match meta.endpoint.addr {
                smoltcp::wire::IpAddress::Ipv4(_) => MAX_IPV4_UDP_PAYLOAD,
                smoltcp::wire::IpAddress::Ipv6(_) => MAX_IPV6_UDP_PAYLOAD,
            };
            if data.len() > max {
                tracing::warn!(
                    from = %meta.endpoint,
                    bytes = data.len(),
                    "not echoed: larger than a datagram can carry"
                );
                continue;
            }
            tracing::debug!(from = %meta.endpoint, bytes = data.len(), "echo");
            // From the host's address, whatever the datagram was sent to (a broadcast address
            // is no source).
            let reply = udp::UdpMetadata {
                local_address: None,
                ..meta
            };
            match socket.send_slice(&data, reply) {
                Ok(()) => echoed += 1,
                Err(e) => tracing::warn!(from = %meta.endpoint, "echo dropped: {e}"),
            }
        }
        station.poll(&mut sockets);
        station.wait(&sockets, stop)?;
    }
    tracing::info!(echoed, "stopping");
    sockets.get_mut::<udp::Socket>(handle).close();
    station.finish(&mut sockets);
    Ok(())
}
