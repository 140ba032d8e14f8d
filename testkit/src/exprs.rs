//! Random pcap-filter expressions from a grammar of netmux's tests: every primitive and
//! qualifier, bare values that inherit qualifiers, arithmetic with every operator, names from
//! the system's databases (`localhost`, `http`, `loopback`, `gre`) and names that are nowhere,
//! constant indexes that wrap (`ip[-1]`), and values out of range. The differential tests run
//! what it makes through netmux and libpcap; a seed replays a run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The expression generator.
pub struct ExprGen {
    rng: StdRng,
}

impl ExprGen {
    /// A generator whose expressions are a function of `seed`.
    pub fn new(seed: u64) -> ExprGen {
        ExprGen {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.rng.gen_range(0..xs.len())]
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    /// An expression with boolean operators nested up to `depth` deep.
    pub fn expr(&mut self, depth: u32) -> String {
        let mut s = self.term(depth);
        let n = if depth == 0 {
            0
        } else {
            self.rng.gen_range(0..3)
        };
        for _ in 0..n {
            let op = self.pick(&["and", "or", "&&", "||"]);
            // Sometimes a bare value that inherits the qualifiers before it.
            let rhs = if self.chance(0.15) {
                self.bare_value()
            } else {
                self.term(depth - 1)
            };
            s = format!("{s} {op} {rhs}");
        }
        s
    }

    fn bare_value(&mut self) -> String {
        match self.rng.gen_range(0..6) {
            0 => self.v4(),
            1 => self.port(),
            2 => format!("not {}", self.v4()),
            3 => format!("({} or {})", self.v4(), self.v4()),
            4 => self.v6(),
            _ => self.num_small(),
        }
    }

    fn term(&mut self, depth: u32) -> String {
        let t = if depth > 0 && self.chance(0.2) {
            format!("({})", self.expr(depth - 1))
        } else {
            self.prim()
        };
        if self.chance(0.2) {
            format!("{} {t}", self.pick(&["not", "!"]))
        } else {
            t
        }
    }

    fn v4(&mut self) -> String {
        self.pick(&[
            "10.0.0.1",
            "10.0.0.2",
            "192.168.1.1",
            "1.2.3.4",
            "224.0.0.251",
            "10",
            "10.0",
            "192.168",
            "0.0.0.0",
            "255.255.255.255",
            "300.1.1.1",
            "localhost",
        ])
        .to_owned()
    }

    fn v6(&mut self) -> String {
        self.pick(&["::1", "fe80::1", "2001:db8::2", "ff02::fb", "::"])
            .to_owned()
    }

    fn port(&mut self) -> String {
        self.pick(&[
            "53",
            "80",
            "443",
            "7",
            "25",
            "1024",
            "5353",
            "0",
            "65535",
            "65536",
            "0x50",
            "http",
            "domain",
            "https",
            "ssh",
            "nosuchservice",
        ])
        .to_owned()
    }

    fn num_small(&mut self) -> String {
        self.pick(&["0", "1", "6", "17", "58", "255", "256", "1500", "1501"])
            .to_owned()
    }

    fn dir(&mut self) -> &'static str {
        self.pick(&[
            "",
            "",
            "src ",
            "dst ",
            "src or dst ",
            "src and dst ",
            "dst or src ",
        ])
    }

    fn prim(&mut self) -> String {
        match self.rng.gen_range(0..22) {
            0 | 1 => self
                .pick(&[
                    "ip", "ip6", "arp", "rarp", "tcp", "udp", "sctp", "icmp", "icmp6", "igmp",
                    "igrp", "pim", "vrrp", "carp", "ah", "esp", "stp", "ipx", "netbeui", "iso",
                ])
                .to_owned(),
            2 | 3 => {
                let proto = self.pick(&["", "", "ip ", "arp ", "rarp ", "ip6 ", "tcp ", "ether "]);
                let dir = self.dir();
                let kw = self.pick(&["host ", "", "net "]);
                let v = if self.chance(0.8) {
                    self.v4()
                } else {
                    self.v6()
                };
                let s = format!("{proto}{dir}{kw}{v}");
                if s.trim() == v {
                    format!("host {v}")
                } else {
                    s
                }
            }
            4 => {
                let proto = self.pick(&["", "ip ", "arp ", "rarp "]);
                let dir = self.dir();
                let net = self.pick(&[
                    "10.0.0.0/8",
                    "192.168.0.0/16",
                    "10.0.0.1/8",
                    "0.0.0.0/0",
                    "1.2.3.4/32",
                    "10.0.0.0 mask 255.0.0.0",
                    "192.168 mask 255.255",
                    "10/8",
                    "10.0.0.0/33",
                    "loopback",
                    "link-local",
                    "nosuchnet",
                ]);
                format!("{proto}{dir}net {net}")
            }
            5 => {
                let dir = self.dir();
                let net = self.pick(&[
                    "fe80::/10",
                    "ff00::/8",
                    "2001:db8::/32",
                    "::/0",
                    "::1/128",
                    "fe80::/129",
                ]);
                let proto = self.pick(&["", "ip6 "]);
                format!("{proto}{dir}net {net}")
            }
            6 | 7 => {
                let proto = self.pick(&["", "", "tcp ", "udp ", "sctp ", "icmp "]);
                let dir = self.dir();
                let p = self.port();
                format!("{proto}{dir}port {p}")
            }
            8 => {
                let proto = self.pick(&["", "tcp ", "udp ", "sctp "]);
                let dir = self.dir();
                let r = self.pick(&[
                    "1-1023",
                    "1023-1",
                    "53-53",
                    "53",
                    "6000-7000",
                    "0-65535",
                    "5-65536",
                    "http-https",
                    "ftp-data-ssh",
                    "domain-http",
                    "1-domain",
                    "80--5",
                ]);
                format!("{proto}{dir}portrange {r}")
            }
            9 => {
                let proto = self.pick(&["", "ip ", "ip6 ", "tcp "]);
                let p = self.pick(&[
                    "6",
                    "17",
                    "1",
                    "58",
                    "47",
                    "50",
                    "51",
                    "132",
                    "0",
                    "255",
                    "\\tcp",
                    "\\udp",
                    "gre",
                    "ospf",
                    "ipv6-icmp",
                    "nosuchproto",
                ]);
                format!("{proto}proto {p}")
            }
            10 => {
                let proto = self.pick(&["", "ip ", "ip6 "]);
                let p = self.pick(&["6", "17", "58", "59", "51", "132", "ipv6-icmp"]);
                format!("{proto}protochain {p}")
            }
            11 => {
                let kw = self.pick(&["ether", "link"]);
                let v = self.pick(&[
                    "0x800", "0x86dd", "0x806", "0x8035", "6", "0x42", "0xe0", "0xf0", "0xfe", "0",
                    "255", "1500", "1501", "0x8137", "0x809b", "0x80f3", "0x8100", "0x8847",
                    "\\ip", "\\arp", "\\ip6",
                ]);
                format!("{kw} proto {v}")
            }
            12 => {
                let dir = self.dir();
                let m = self.pick(&[
                    "00:11:22:33:44:55",
                    "02:00:00:00:00:01",
                    "ff:ff:ff:ff:ff:ff",
                    "1:0:5e:0:0:1",
                ]);
                let kw = self.pick(&["", "host "]);
                format!("ether {dir}{kw}{m}")
            }
            13 => {
                let p = self.pick(&["", "ether ", "link ", "ip ", "ip6 ", "tcp "]);
                let w = self.pick(&["broadcast", "multicast"]);
                format!("{p}{w}")
            }
            14 => {
                let w = self.pick(&["less", "greater"]);
                let n = self.pick(&["0", "14", "60", "64", "100", "1500"]);
                format!("{w} {n}")
            }
            15 => {
                let n = self.pick(&["", " 10", " 100", " 4095", " 4096", " 1", " 300", " 2"]);
                format!("vlan{n}")
            }
            16 => {
                let n = self.pick(&["", " 100", " 200", " 16", " 17", " 1048575", " 1048576"]);
                format!("mpls{n}")
            }
            _ => {
                let op = self.pick(&["=", "==", "!=", "<", "<=", ">", ">="]);
                format!("{} {op} {}", self.arith(3), self.arith(2))
            }
        }
    }

    fn arith(&mut self, depth: u32) -> String {
        let leaf = depth == 0 || self.chance(0.35);
        if leaf {
            return match self.rng.gen_range(0..6) {
                0 | 1 => self.load(depth),
                2 => "len".to_owned(),
                _ => self
                    .pick(&[
                        "0",
                        "1",
                        "2",
                        "4",
                        "8",
                        "14",
                        "0x45",
                        "60",
                        "255",
                        "0xff",
                        "1500",
                        "0xffffffff",
                        "tcp-syn",
                        "tcpflags",
                        "icmp-echo",
                    ])
                    .to_owned(),
            };
        }
        match self.rng.gen_range(0..8) {
            0 => format!("-{}", self.arith(depth - 1)),
            1 => format!("({})", self.arith(depth - 1)),
            _ => {
                let op = self.pick(&["+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>"]);
                let rhs = if matches!(op, "<<" | ">>") && self.chance(0.7) {
                    self.pick(&["1", "2", "4", "31", "32"]).to_owned()
                } else {
                    self.arith(depth - 1)
                };
                format!("{} {op} {rhs}", self.arith(depth - 1))
            }
        }
    }

    fn load(&mut self, depth: u32) -> String {
        let p = self.pick(&[
            "ether", "link", "ip", "ip6", "arp", "rarp", "tcp", "udp", "sctp", "icmp", "icmp6",
            "igmp", "pim", "vrrp", "carp", "igrp",
        ]);
        let idx = if depth > 1 && self.chance(0.15) {
            self.arith(1)
        } else {
            self.pick(&[
                "0",
                "1",
                "2",
                "6",
                "9",
                "12",
                "13",
                "16",
                "20",
                "40",
                "100",
                // Constant indexes that wrap when added to the header's offset.
                "-1",
                "-2",
                "-14",
                "-40",
                "1 - 2",
                "0xfffffff2",
                "len * 0 - 4",
            ])
            .to_owned()
        };
        let size = self.pick(&["", "", ":1", ":2", ":4", ":3"]);
        format!("{p}[{idx}{size}]")
    }
}
