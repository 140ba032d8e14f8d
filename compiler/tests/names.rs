//! Names resolved from a fixed database (`StaticResolver`), so the tests do not depend on the
//! machine: a filter with names gives, on every frame, libpcap's verdict for the numbers the
//! names stand for (libpcap builds the same code from the addresses a name has, in the same
//! order), the names' errors are libpcap's texts, and `compile_with` says what each became.

use netmux_compiler::{
    compile_with, CompileError, Compiled, LinkType, NoResolver, Options, StaticResolver,
};
use netmux_testkit::frames::{relink, sample_frames};
use netmux_testkit::BpfProgram;

fn db() -> StaticResolver {
    StaticResolver::new()
        .with_hosts(
            "10.0.0.1 multi\n10.0.0.2 multi other-name\n::1 multi\n192.168.1.1 v4only\nfe80::1 v6only\n",
        )
        .with_networks("tennet 10\nhomenet 192.168\nloopback 127.0.0.0\ndefault 0.0.0.0\n")
        .with_services(
            "webby 80/tcp\nnamey 53/tcp\nnamey 53/udp\nloggy 514/udp\nsplit 7/tcp\nsplit 9/udp\n",
        )
        .with_protocols("tcp 6\nudp 17\ngre 47 GRE\n")
        .with_ethers("0:11:22:33:44:55 gw\n")
}

fn compile(expr: &str, link: LinkType) -> Result<Compiled, CompileError> {
    let opts = Options {
        link,
        ..Options::default()
    };
    compile_with(expr, &opts, &db())
}

/// `named` (resolved from [`db`]) and libpcap's program for `numeric` give the same verdict
/// on every self-made frame of the link layer.
fn same_as(named: &str, numeric: &str, link: LinkType) {
    let program = compile(named, link)
        .unwrap_or_else(|e| panic!("{named}: {e}"))
        .program;
    let oracle = BpfProgram::compile_for(numeric, true, link.dlt() as i32)
        .unwrap_or_else(|e| panic!("libpcap: {numeric}: {e}"));
    let plain = BpfProgram::compile_for(numeric, false, link.dlt() as i32).unwrap();
    for f in sample_frames(60, 5) {
        let f = relink(&f, link.dlt() as i32);
        let ours = netmux_vm::interp::run(&program, &f.data, f.wire_len, &mut [0; 16]).is_accept();
        // Where libpcap's optimizer changes its own verdict (a truncated frame), netmux gives
        // the unoptimized one.
        assert!(
            ours == oracle.matches(&f.data, f.wire_len)
                || ours == plain.matches(&f.data, f.wire_len),
            "`{named}` and `{numeric}` on {}: {:02x?}",
            link.name(),
            &f.data[..f.data.len().min(40)]
        );
    }
}

#[test]
fn a_host_name_is_every_address_it_has_in_order() {
    same_as(
        "host multi",
        "host 10.0.0.1 or host 10.0.0.2 or host ::1",
        LinkType::Ethernet,
    );
    same_as(
        "src host multi",
        "src host 10.0.0.1 or src host 10.0.0.2 or src host ::1",
        LinkType::Ethernet,
    );
    same_as(
        "ip host multi",
        "ip host 10.0.0.1 or ip host 10.0.0.2",
        LinkType::Ethernet,
    );
    same_as("ip6 host multi", "ip6 host ::1", LinkType::Ethernet);
    same_as(
        "arp host v4only",
        "arp host 192.168.1.1",
        LinkType::LinuxSll,
    );
    same_as(
        "host other-name or udp",
        "host 10.0.0.2 or udp",
        LinkType::Ethernet,
    );
}

#[test]
fn without_a_link_type_field_a_names_addresses_are_tested_as_ip_and_ip6() {
    for link in [LinkType::Raw, LinkType::Ipv4, LinkType::Ipv6] {
        same_as(
            "host multi",
            "ip host 10.0.0.1 or ip host 10.0.0.2 or ip6 host ::1",
            link,
        );
    }
}

#[test]
fn networks_services_protocols_and_ethers_are_their_numbers() {
    same_as("net tennet", "net 10.0.0.0/8", LinkType::Ethernet);
    same_as(
        "dst net homenet",
        "dst net 192.168.0.0/16",
        LinkType::Ethernet,
    );
    // A network number with a last byte is a host address, as libpcap shifts it.
    same_as("net loopback", "net 127.0.0.0/32", LinkType::Ethernet);
    // Only TCP has `webby`: `port webby` is `tcp port 80`, as tcpdump compiles it.
    same_as("port webby", "tcp port 80", LinkType::Ethernet);
    same_as("tcp dst port webby", "tcp dst port 80", LinkType::Ethernet);
    same_as("port namey", "port 53", LinkType::Ethernet);
    same_as("udp port namey", "udp port 53", LinkType::Ethernet);
    same_as("port loggy", "udp port 514", LinkType::Ethernet);
    // A name for two different ports: the TCP one, for TCP.
    same_as("port split", "tcp port 7", LinkType::Ethernet);
    same_as(
        "portrange webby-namey",
        "portrange 53-80",
        LinkType::Ethernet,
    );
    same_as(
        "tcp portrange webby-namey",
        "tcp portrange 53-80",
        LinkType::Ethernet,
    );
    same_as("portrange 1-namey", "portrange 1-53", LinkType::Ethernet);
    same_as("ip proto gre", "ip proto 47", LinkType::Ethernet);
    same_as("proto GRE", "proto 47", LinkType::Ethernet);
    same_as(
        "ip6 protochain \\udp",
        "ip6 protochain 17",
        LinkType::Ethernet,
    );
    same_as(
        "ether host gw",
        "ether host 00:11:22:33:44:55",
        LinkType::Ethernet,
    );
    same_as(
        "ether src gw",
        "ether src 00:11:22:33:44:55",
        LinkType::Ethernet,
    );
}

#[test]
fn compile_with_says_what_each_name_became() {
    let c = compile(
        "host multi and port webby or net tennet or ip proto gre or portrange namey-webby or ether host gw",
        LinkType::Ethernet,
    )
    .unwrap();
    let shown: Vec<String> = c.names.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "host multi = 10.0.0.1 10.0.0.2 ::1",
            "port webby = 80/tcp",
            "net tennet = 10.0.0.0/8",
            "proto gre = 47",
            "portrange namey-webby = 53-80",
            "ether host gw = 00:11:22:33:44:55",
        ]
    );
    assert!(compile("tcp port 80", LinkType::Ethernet)
        .unwrap()
        .names
        .is_empty());
}

/// The error message of `expr` (without the caret lines).
fn error(expr: &str, link: LinkType) -> String {
    compile(expr, link)
        .map(|_| "compiled".to_owned())
        .unwrap_or_else(|e| e.message())
}

#[test]
fn unknown_names_get_libpcaps_errors() {
    let eth = LinkType::Ethernet;
    assert_eq!(error("host nowhere", eth), "unknown host 'nowhere'");
    assert_eq!(
        error("ip6 host v4only", eth),
        "unknown host 'v4only' for specified address family"
    );
    assert_eq!(
        error("ip host v6only", eth),
        "unknown host 'v6only' for specified address family"
    );
    assert_eq!(
        error("tcp host multi", eth),
        "'tcp' modifier applied to host"
    );
    assert_eq!(error("net nowhere", eth), "unknown network 'nowhere'");
    // A network numbered 0 is unknown to libpcap.
    assert_eq!(error("net default", eth), "unknown network 'default'");
    assert_eq!(error("port nowhere", eth), "unknown port 'nowhere'");
    assert_eq!(error("udp port webby", eth), "port 'webby' is tcp");
    assert_eq!(error("tcp port loggy", eth), "port 'loggy' is udp");
    assert_eq!(error("icmp port webby", eth), "illegal qualifier of 'port'");
    assert_eq!(
        error("portrange nowhere", eth),
        "unknown port in range 'nowhere'"
    );
    assert_eq!(
        error("portrange 5-70000", eth),
        "illegal port number 70000 > 65535"
    );
    assert_eq!(
        error("udp portrange webby-webby", eth),
        "port in range 'webby-webby' is tcp"
    );
    assert_eq!(error("ip proto nowhere", eth), "unknown ip proto 'nowhere'");
    assert_eq!(
        error("ether proto \\nowhere", eth),
        "unknown ether proto 'nowhere'"
    );
    assert_eq!(
        error("ether host nowhere", eth),
        "unknown ether host 'nowhere'"
    );
    assert_eq!(
        error("ether host gw", LinkType::LinuxSll),
        "only ethernet/FDDI/token ring/802.11/ATM LANE/Fibre Channel supports link-level host name"
    );
    assert_eq!(
        error("gateway multi", eth),
        "'gateway' not supported in this configuration"
    );
    assert_eq!(error("gateway 10.0.0.1", eth), "'gateway' requires a name");
}

#[test]
fn with_no_resolver_every_name_is_unknown_and_numbers_still_compile() {
    let opts = Options::default();
    let e = compile_with("host localhost", &opts, &NoResolver).unwrap_err();
    assert_eq!(e.message(), "unknown host 'localhost'");
    let e = compile_with("tcp port http", &opts, &NoResolver).unwrap_err();
    assert_eq!(e.message(), "unknown port 'http'");
    assert!(compile_with("tcp dst port 80 and dst host 10.0.0.2", &opts, &NoResolver).is_ok());
}
