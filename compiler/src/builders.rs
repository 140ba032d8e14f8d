//! Filter builders for netd: the per-port receive and transmit filters and the ARP filters,
//! written as pcap-filter expressions and compiled by the same compiler as everything else
//! (so they get the same libpcap semantics, optimizer and verifier).
//!
//! * [`rx_port`]: frames for a bound port: destination MAC, destination IP (v4 or v6),
//!   protocol and destination port.
//! * [`tx_port`]: frames a client may send from a bound port: source MAC, source IP,
//!   protocol and source port (anything else is spoofed).
//! * [`arp_rx`]: ARP replies, and ARP requests for our address.
//! * [`arp_tx`]: ARP requests or replies whose Ethernet source, sender MAC and sender IP are
//!   ours (the host's own transmit filter: netd alone answers for the host).
//! * [`arp_request_tx`]: the same, requests only: what a client may send. Every client shares
//!   the host's address, so a client's reply for it would be one more answer to a request netd
//!   already answers.
//!
//! The driver reassembles IP fragments before it classifies, so the port tests (which, as in
//! libpcap, only look at first fragments) see whole datagrams.

use std::fmt::Write;
use std::net::IpAddr;

pub use netmux_proto::client::Transport;
use netmux_vm::Program;

use crate::{compile_with, CompileError, Options};

/// A port binding: whose frames these are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The client's (or the host's) MAC address.
    pub mac: [u8; 6],
    /// The bound IP address.
    pub ip: IpAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// The bound port.
    pub port: u16,
}

/// A MAC address as the pcap-filter language writes it: `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: &[u8; 6]) -> String {
    let mut s = String::new();
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn ip_qualifier(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

/// The receive filter expression for a binding.
pub fn rx_port_expr(b: &Binding) -> String {
    format!(
        "ether dst {} and {} dst host {} and {} dst port {}",
        mac_text(&b.mac),
        ip_qualifier(&b.ip),
        b.ip,
        b.transport.keyword(),
        b.port
    )
}

/// The transmit filter expression for a binding.
pub fn tx_port_expr(b: &Binding) -> String {
    format!(
        "ether src {} and {} src host {} and {} src port {}",
        mac_text(&b.mac),
        ip_qualifier(&b.ip),
        b.ip,
        b.transport.keyword(),
        b.port
    )
}

/// The ARP receive filter expression: replies, and requests whose target IP is `ip`.
pub fn arp_rx_expr(ip: std::net::Ipv4Addr) -> String {
    format!("arp and (arp[6:2] = 2 or (arp[6:2] = 1 and arp dst host {ip}))")
}

/// The ARP transmit filter expression: a request or reply sent from `mac` whose sender
/// hardware and protocol addresses are `mac` and `ip`.
pub fn arp_tx_expr(mac: [u8; 6], ip: std::net::Ipv4Addr) -> String {
    let hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let lo = u16::from_be_bytes([mac[4], mac[5]]);
    format!(
        "ether src {} and arp and (arp[6:2] = 1 or arp[6:2] = 2) and arp[8:4] = {hi:#x} and arp[12:2] = {lo:#x} and arp src host {ip}",
        mac_text(&mac)
    )
}

/// The ARP transmit filter expression of a client: a request sent from `mac` whose sender
/// hardware and protocol addresses are `mac` and `ip`. Replies are netd's alone.
pub fn arp_request_tx_expr(mac: [u8; 6], ip: std::net::Ipv4Addr) -> String {
    let hi = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let lo = u16::from_be_bytes([mac[4], mac[5]]);
    format!(
        "ether src {} and arp and arp[6:2] = 1 and arp[8:4] = {hi:#x} and arp[12:2] = {lo:#x} and arp src host {ip}",
        mac_text(&mac)
    )
}

/// Compiles a builder's expression: numbers only, so no name is ever looked up.
fn build(expr: &str, accept_value: u32) -> Result<Program, CompileError> {
    compile_with(
        expr,
        &Options {
            accept_value,
            ..Options::default()
        },
        &crate::NoResolver,
    )
    .map(|c| c.program)
}

/// The verified receive filter for a binding, accepting with `accept_value`.
pub fn rx_port(b: &Binding, accept_value: u32) -> Result<Program, CompileError> {
    build(&rx_port_expr(b), accept_value)
}

/// The verified transmit filter for a binding, accepting with `accept_value`.
pub fn tx_port(b: &Binding, accept_value: u32) -> Result<Program, CompileError> {
    build(&tx_port_expr(b), accept_value)
}

/// The verified ARP receive filter.
pub fn arp_rx(ip: std::net::Ipv4Addr, accept_value: u32) -> Result<Program, CompileError> {
    build(&arp_rx_expr(ip), accept_value)
}

/// The verified ARP transmit filter.
pub fn arp_tx(
    mac: [u8; 6],
    ip: std::net::Ipv4Addr,
    accept_value: u32,
) -> Result<Program, CompileError> {
    build(&arp_tx_expr(mac, ip), accept_value)
}

/// The verified ARP transmit filter of a client (requests only).
pub fn arp_request_tx(
    mac: [u8; 6],
    ip: std::net::Ipv4Addr,
    accept_value: u32,
) -> Result<Program, CompileError> {
    build(&arp_request_tx_expr(mac, ip), accept_value)
}
