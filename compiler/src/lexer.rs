//! The pcap-filter lexer: text to tokens with byte spans, as libpcap's `scanner.l` cuts it.
//!
//! At each position every token class that could start there is measured (punctuation with
//! nom, words with byte scanners checked against a nom grammar in the tests), and the longest
//! wins; ties go to the class `scanner.l` lists first (keyword, number, dotted IPv4, MAC,
//! IPv6, name). So `10.0.0.1` is an address, `1.2.3.4.5` is a name
//! (and later an error), `tcp-syn` is the named constant 2, and `len-1` is one name, exactly as
//! in tcpdump. Numbers follow libpcap: `0x` hex, a leading `0` octal, decimal otherwise, and
//! anything above 2^32 - 1 is an error. A backslash makes a keyword a plain name (`\tcp`).
//!
//! Guarantees: never panics; every token's span lies within the input and tokens are in order.

use std::net::Ipv6Addr;

use nom::branch::alt;
use nom::bytes::complete::tag;
use nom::character::complete::char;
use nom::IResult;

use crate::error::{syntax, Result, Span};

/// Keywords of the language (after lexing, named constants are already numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Kw {
    // protocol qualifiers
    Link,
    Ip,
    Ip6,
    Arp,
    Rarp,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmp6,
    Igmp,
    Igrp,
    Pim,
    Vrrp,
    Carp,
    Ah,
    Esp,
    Stp,
    Ipx,
    Netbeui,
    Iso,
    // direction qualifiers
    Src,
    Dst,
    // address-kind qualifiers
    Host,
    Net,
    Port,
    Portrange,
    Gateway,
    Proto,
    Protochain,
    Mask,
    // other primitives
    Broadcast,
    Multicast,
    Less,
    Greater,
    Len,
    Vlan,
    Mpls,
    Geneve,
    // boolean operators
    And,
    Or,
    Not,
}

/// Punctuation and operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Punct {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Colon,
    Slash,
    Plus,
    Minus,
    Star,
    Percent,
    Amp,
    Pipe,
    Caret,
    Shl,
    Shr,
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

/// One token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// A number (including named constants such as `tcp-syn`).
    Num(u32),
    /// A dotted IPv4 address or prefix of one (`10`, `10.1`, `10.1.2`, `10.1.2.3` with dots).
    Hid(String),
    /// An IPv6 address.
    Hid6(Ipv6Addr),
    /// A MAC address.
    Eid([u8; 6]),
    /// A name (host, service, protocol name, or an escaped keyword without its backslash).
    Id(String),
    /// A keyword.
    Kw(Kw),
    /// An operator or bracket.
    P(Punct),
}

/// A token and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Its bytes in the expression.
    pub span: Span,
}

/// Keywords of libpcap's scanner that netmux recognises but does not implement; using one
/// gives a clear "not supported" error instead of a confusing host-name error.
pub const UNSUPPORTED_KEYWORDS: &[&str] = &[
    "atalk",
    "aarp",
    "decnet",
    "lat",
    "sca",
    "moprc",
    "mopdl",
    "esis",
    "es-is",
    "isis",
    "is-is",
    "l1",
    "l2",
    "iih",
    "lsp",
    "snp",
    "csnp",
    "psnp",
    "clnp",
    "radio",
    "byte",
    "inbound",
    "outbound",
    "ifindex",
    "pppoed",
    "pppoes",
    "lane",
    "llc",
    "metac",
    "bcc",
    "oam",
    "oamf4",
    "oamf4ec",
    "oamf4sc",
    "sc",
    "ilmic",
    "vpi",
    "vci",
    "connectmsg",
    "metaconnect",
    "on",
    "ifname",
    "rnr",
    "rulenum",
    "reason",
    "rset",
    "ruleset",
    "srnr",
    "subrulenum",
    "action",
    "type",
    "subtype",
    "direction",
    "dir",
    "addr1",
    "addr2",
    "addr3",
    "addr4",
    "address1",
    "address2",
    "address3",
    "address4",
    "ra",
    "ta",
    "fisu",
    "lssu",
    "msu",
    "hfisu",
    "hlssu",
    "hmsu",
    "sio",
    "opc",
    "dpc",
    "sls",
    "hsio",
    "hopc",
    "hdpc",
    "hsls",
];

fn keyword(s: &str) -> Option<Kw> {
    // Byte-string patterns compile to a decision tree on the length and the bytes, not
    // to one comparison per arm.
    Some(match s.as_bytes() {
        b"link" | b"ether" | b"fddi" | b"tr" | b"wlan" => Kw::Link,
        b"ip" => Kw::Ip,
        b"ip6" => Kw::Ip6,
        b"arp" => Kw::Arp,
        b"rarp" => Kw::Rarp,
        b"tcp" => Kw::Tcp,
        b"udp" => Kw::Udp,
        b"sctp" => Kw::Sctp,
        b"icmp" => Kw::Icmp,
        b"icmp6" => Kw::Icmp6,
        b"igmp" => Kw::Igmp,
        b"igrp" => Kw::Igrp,
        b"pim" => Kw::Pim,
        b"vrrp" => Kw::Vrrp,
        b"carp" => Kw::Carp,
        b"ah" => Kw::Ah,
        b"esp" => Kw::Esp,
        b"stp" => Kw::Stp,
        b"ipx" => Kw::Ipx,
        b"netbeui" => Kw::Netbeui,
        b"iso" => Kw::Iso,
        b"src" => Kw::Src,
        b"dst" => Kw::Dst,
        b"host" => Kw::Host,
        b"net" => Kw::Net,
        b"port" => Kw::Port,
        b"portrange" => Kw::Portrange,
        b"gateway" => Kw::Gateway,
        b"proto" => Kw::Proto,
        b"protochain" => Kw::Protochain,
        b"mask" => Kw::Mask,
        b"broadcast" => Kw::Broadcast,
        b"multicast" => Kw::Multicast,
        b"less" => Kw::Less,
        b"greater" => Kw::Greater,
        b"len" | b"length" => Kw::Len,
        b"vlan" => Kw::Vlan,
        b"mpls" => Kw::Mpls,
        b"geneve" => Kw::Geneve,
        b"and" => Kw::And,
        b"or" => Kw::Or,
        b"not" => Kw::Not,
        _ => return None,
    })
}

/// libpcap's named constants, which its scanner returns as numbers.
fn named_constant(s: &str) -> Option<u32> {
    // Byte-string patterns compile to a decision tree on the length and the bytes, not
    // to one comparison per arm.
    Some(match s.as_bytes() {
        b"icmptype" => 0,
        b"icmpcode" => 1,
        b"icmp-echoreply" => 0,
        b"icmp-unreach" => 3,
        b"icmp-sourcequench" => 4,
        b"icmp-redirect" => 5,
        b"icmp-echo" => 8,
        b"icmp-routeradvert" => 9,
        b"icmp-routersolicit" => 10,
        b"icmp-timxceed" => 11,
        b"icmp-paramprob" => 12,
        b"icmp-tstamp" => 13,
        b"icmp-tstampreply" => 14,
        b"icmp-ireq" => 15,
        b"icmp-ireqreply" => 16,
        b"icmp-maskreq" => 17,
        b"icmp-maskreply" => 18,
        b"icmp6type" => 0,
        b"icmp6code" => 1,
        b"icmp6-destinationunreach" => 1,
        b"icmp6-packettoobig" => 2,
        b"icmp6-timeexceeded" => 3,
        b"icmp6-parameterproblem" => 4,
        b"icmp6-echo" => 128,
        b"icmp6-echoreply" => 129,
        b"icmp6-multicastlistenerquery" => 130,
        b"icmp6-multicastlistenerreportv1" => 131,
        b"icmp6-multicastlistenerdone" => 132,
        b"icmp6-routersolicit" => 133,
        b"icmp6-routeradvert" => 134,
        b"icmp6-neighborsolicit" => 135,
        b"icmp6-neighboradvert" => 136,
        b"icmp6-redirect" => 137,
        b"icmp6-routerrenum" => 138,
        b"icmp6-nodeinformationquery" => 139,
        b"icmp6-nodeinformationresponse" => 140,
        b"icmp6-ineighbordiscoverysolicit" => 141,
        b"icmp6-ineighbordiscoveryadvert" => 142,
        b"icmp6-multicastlistenerreportv2" => 143,
        b"icmp6-homeagentdiscoveryrequest" => 144,
        b"icmp6-homeagentdiscoveryreply" => 145,
        b"icmp6-mobileprefixsolicit" => 146,
        b"icmp6-mobileprefixadvert" => 147,
        b"icmp6-certpathsolicit" => 148,
        b"icmp6-certpathadvert" => 149,
        b"icmp6-multicastrouteradvert" => 151,
        b"icmp6-multicastroutersolicit" => 152,
        b"icmp6-multicastrouterterm" => 153,
        b"tcpflags" => 13,
        b"tcp-fin" => 0x01,
        b"tcp-syn" => 0x02,
        b"tcp-rst" => 0x04,
        b"tcp-push" => 0x08,
        b"tcp-ack" => 0x10,
        b"tcp-urg" => 0x20,
        b"tcp-ece" => 0x40,
        b"tcp-cwr" => 0x80,
        _ => return None,
    })
}

fn punct(i: &str) -> IResult<&str, Punct> {
    use Punct::*;
    alt((
        alt((
            tag("<<").map(|_| Shl),
            tag(">>").map(|_| Shr),
            tag("<=").map(|_| Le),
            tag(">=").map(|_| Ge),
            tag("==").map(|_| Eq),
            tag("!=").map(|_| Ne),
        )),
        alt((
            char('(').map(|_| LParen),
            char(')').map(|_| RParen),
            char('[').map(|_| LBracket),
            char(']').map(|_| RBracket),
            char(':').map(|_| Colon),
            char('/').map(|_| Slash),
            char('+').map(|_| Plus),
            char('-').map(|_| Minus),
            char('*').map(|_| Star),
            char('%').map(|_| Percent),
            char('&').map(|_| Amp),
            char('|').map(|_| Pipe),
            char('^').map(|_| Caret),
            char('<').map(|_| Lt),
            char('>').map(|_| Gt),
            char('=').map(|_| Eq),
        )),
    ))(i)
}

use nom::Parser;

// The word scanners below run at every word of every expression, so they are plain byte
// loops rather than nom combinators (a quarter of the compile time of a short filter went to
// the combinators); `scanners_match_the_nom_grammar` checks them against the nom forms on
// random input. Each returns the length of its match at the start of `b`, 0 for none.

/// The length of the run at the start of `b` (at most `max` bytes) whose bytes satisfy `f`.
fn run(b: &[u8], max: usize, f: impl Fn(u8) -> bool) -> usize {
    b.iter().take(max).take_while(|&&c| f(c)).count()
}

/// `0x` hex digits, or decimal digits.
fn number_len(b: &[u8]) -> usize {
    if b.len() > 2 && b[0] == b'0' && matches!(b[1], b'x' | b'X') {
        let h = run(&b[2..], usize::MAX, |c| c.is_ascii_hexdigit());
        if h > 0 {
            return 2 + h;
        }
    }
    run(b, usize::MAX, |c| c.is_ascii_digit())
}

/// Two to four dot-separated decimal numbers.
fn dotted_len(b: &[u8]) -> usize {
    let digits = |i: usize| run(&b[i..], usize::MAX, |c| c.is_ascii_digit());
    let mut n = digits(0);
    if n == 0 {
        return 0;
    }
    for group in 0..3 {
        let more = if b.get(n) == Some(&b'.') {
            digits(n + 1)
        } else {
            0
        };
        if more == 0 {
            // The second number is required; the third and fourth are not.
            return if group == 0 { 0 } else { n };
        }
        n += 1 + more;
    }
    n
}

/// `a:b:c:d:e:f`, `a-b-c-d-e-f`, `a.b.c.d.e.f` (1-2 hex digits each) or `abcd.abcd.abcd`;
/// the first form that matches wins.
fn mac_len(b: &[u8]) -> usize {
    let hex = |c: u8| c.is_ascii_hexdigit();
    let first = run(b, 2, hex);
    if first == 0 {
        return 0;
    }
    'sep: for sep in [b':', b'-', b'.'] {
        let mut n = first;
        for _ in 0..5 {
            let byte = if b.get(n) == Some(&sep) {
                run(&b[n + 1..], 2, hex)
            } else {
                0
            };
            if byte == 0 {
                continue 'sep;
            }
            n += 1 + byte;
        }
        return n;
    }
    let word = |i: usize| b.get(i..i + 4).is_some_and(|w| w.iter().all(|&c| hex(c)));
    if word(0) && b.get(4) == Some(&b'.') && word(5) && b.get(9) == Some(&b'.') && word(10) {
        14
    } else {
        0
    }
}

/// An alphanumeric character, then alphanumerics, `-`, `_` and `.`; the last character must
/// be alphanumeric or a dot.
fn name_len(b: &[u8]) -> usize {
    if !b.first().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return 0;
    }
    let mut n = 1 + run(&b[1..], usize::MAX, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
    });
    while n > 1 && matches!(b[n - 1], b'-' | b'_') {
        n -= 1;
    }
    n
}

fn parse_number(text: &str, span: Span) -> Result<u32> {
    let (digits, radix) = if let Some(h) = text.strip_prefix("0x").or(text.strip_prefix("0X")) {
        (h, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        if text.chars().any(|c| !('0'..='7').contains(&c)) {
            return syntax(span, format!("number {text} contains non-octal digit"));
        }
        (&text[1..], 8)
    } else {
        (text, 10)
    };
    u32::from_str_radix(digits, radix)
        .or_else(|_| syntax(span, format!("number {text} overflows 32 bits")))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let mut out = [0u8; 6];
    if text.contains(':') || text.contains('-') || text.matches('.').count() == 5 {
        for (o, part) in out.iter_mut().zip(text.split([':', '-', '.'])) {
            *o = u8::from_str_radix(part, 16).ok()?;
        }
    } else {
        for (k, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(hex.get(2 * k..2 * k + 2)?, 16).ok()?;
        }
    }
    Some(out)
}

/// What separates tokens: scanner.l's `[ \r\n\t]`, nothing else (libpcap rejects a form
/// feed or a no-break space as a syntax error).
pub fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Cuts `input` into tokens.
pub fn tokenize(input: &str) -> Result<Vec<Token>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let rest = &input[pos..];
        let c = rest.chars().next().unwrap_or(' ');
        if is_blank(c) {
            pos += 1;
            continue;
        }
        // Boolean operators spelled with punctuation.
        let bool_op = if rest.starts_with("&&") {
            Some((Kw::And, 2))
        } else if rest.starts_with("||") {
            Some((Kw::Or, 2))
        } else if rest.starts_with('!') && !rest.starts_with("!=") {
            Some((Kw::Not, 1))
        } else {
            None
        };
        if let Some((kw, n)) = bool_op {
            out.push(Token {
                tok: Tok::Kw(kw),
                span: Span::new(pos, pos + n),
            });
            pos += n;
            continue;
        }
        if let Some(esc) = rest.strip_prefix('\\') {
            let n = esc
                .find([' ', '!', '(', ')', '\n', '\t'])
                .unwrap_or(esc.len());
            let span = Span::new(pos, pos + 1 + n);
            if n == 0 {
                return syntax(span, "a backslash must be followed by a name");
            }
            out.push(Token {
                tok: Tok::Id(esc[..n].to_owned()),
                span,
            });
            pos += 1 + n;
            continue;
        }
        let starts_v6 = rest.starts_with("::");
        if !c.is_ascii_alphanumeric() && !starts_v6 {
            if let Ok((after, p)) = punct(rest) {
                let n = rest.len() - after.len();
                out.push(Token {
                    tok: Tok::P(p),
                    span: Span::new(pos, pos + n),
                });
                pos += n;
                continue;
            }
            let span = Span::new(pos, pos + c.len_utf8());
            return syntax(span, format!("unexpected character `{}`", c.escape_debug()));
        }
        // Measure every word-like class; the longest wins, ties in scanner.l's order.
        let bytes = rest.as_bytes();
        let id_len = name_len(bytes);
        let word = &rest[..id_len];
        // Every keyword, named constant and unsupported keyword starts with a letter.
        let alpha = c.is_ascii_alphabetic();
        let kw = if alpha { keyword(word) } else { None };
        let constant = if alpha && kw.is_none() {
            named_constant(word)
        } else {
            None
        };
        let is_keyword =
            kw.is_some() || constant.is_some() || alpha && UNSUPPORTED_KEYWORDS.contains(&word);
        // A word that starts with a letter and has no `:`, `.` or `-` (every keyword) can be
        // neither a number nor an address: skip measuring those.
        let word_run = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '-' | '_')))
            .unwrap_or(rest.len());
        let plain_word = !c.is_ascii_digit() && !rest[..word_run].contains([':', '.', '-']);
        let (num_len, hid_len, eid_len, v6_run, v6_len) = if plain_word {
            (0, 0, 0, 0, 0)
        } else {
            let v6_run = rest
                .find(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
                .unwrap_or(rest.len());
            let v6_len =
                if rest[..v6_run].contains(':') && rest[..v6_run].parse::<Ipv6Addr>().is_ok() {
                    v6_run
                } else {
                    0
                };
            (
                number_len(bytes),
                dotted_len(bytes),
                mac_len(bytes),
                v6_run,
                v6_len,
            )
        };
        let candidates = [
            (if is_keyword { id_len } else { 0 }, 0),
            (num_len, 1),
            (eid_len, 2),
            (hid_len, 3),
            (v6_len, 4),
            (id_len, 5),
        ];
        let (n, class) = candidates
            .iter()
            .copied()
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .unwrap_or((0, 5));
        // Something that looks like a MAC or IPv6 address but is neither.
        if v6_run > n && rest[..v6_run].matches(':').count() >= 2 {
            let span = Span::new(pos, pos + v6_run);
            return syntax(
                span,
                format!("`{}` is not a valid MAC or IPv6 address", &rest[..v6_run]),
            );
        }
        let text = &rest[..n.max(1)];
        let span = Span::new(pos, pos + text.len());
        let tok = match class {
            // The keyword class wins only with its whole length: `text` is `word`.
            0 => match (kw, constant) {
                (Some(kw), _) => Tok::Kw(kw),
                (None, Some(v)) => Tok::Num(v),
                (None, None) => Tok::Id(text.to_owned()),
            },
            1 => Tok::Num(parse_number(text, span)?),
            2 => match parse_mac(text) {
                Some(m) => Tok::Eid(m),
                None => return syntax(span, format!("`{text}` is not a valid MAC address")),
            },
            3 => Tok::Hid(text.to_owned()),
            4 => match text.parse() {
                Ok(a) => Tok::Hid6(a),
                Err(_) => return syntax(span, format!("`{text}` is not a valid IPv6 address")),
            },
            _ => Tok::Id(text.to_owned()),
        };
        out.push(Token { tok, span });
        pos += text.len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_libpcaps_blanks_separate_tokens() {
        assert_eq!(tokenize(" tcp\t\r\nudp ").unwrap().len(), 2);
        for (input, at) in [("tcp\x0cudp", 3), ("\x0btcp", 0), ("tcp \u{a0}udp", 4)] {
            let e = tokenize(input).unwrap_err();
            assert_eq!(e.span.start, at, "{input:?}");
            assert!(
                matches!(&e.kind, crate::error::ErrorKind::Syntax(m) if m.starts_with("unexpected character `\\u{")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn every_word_looked_up_starts_with_a_letter() {
        // The lexer looks words up only when they start with a letter.
        for w in UNSUPPORTED_KEYWORDS {
            assert!(w.starts_with(|c: char| c.is_ascii_alphabetic()), "{w}");
        }
        for d in 0..=9 {
            for rest in ["", "1", "6", "x", "-a"] {
                let w = format!("{d}{rest}");
                assert!(keyword(&w).is_none() && named_constant(&w).is_none(), "{w}");
            }
        }
    }

    /// The word grammar as nom combinators, the reference the byte scanners must match.
    mod nom_grammar {
        use nom::branch::alt;
        use nom::bytes::complete::{tag, take_while1, take_while_m_n};
        use nom::character::complete::{char, digit1};
        use nom::combinator::{opt, recognize};
        use nom::multi::count;
        use nom::sequence::{pair, preceded, tuple};
        use nom::IResult;

        pub fn hex_digit(c: char) -> bool {
            c.is_ascii_hexdigit()
        }

        /// `0x` hex digits, or decimal digits.
        pub fn number(i: &str) -> IResult<&str, &str> {
            alt((
                recognize(pair(alt((tag("0x"), tag("0X"))), take_while1(hex_digit))),
                digit1,
            ))(i)
        }

        /// Two to four dot-separated decimal numbers.
        pub fn dotted(i: &str) -> IResult<&str, &str> {
            recognize(tuple((
                digit1,
                preceded(char('.'), digit1),
                opt(preceded(char('.'), digit1)),
                opt(preceded(char('.'), digit1)),
            )))(i)
        }

        fn hex_byte(i: &str) -> IResult<&str, &str> {
            take_while_m_n(1, 2, hex_digit)(i)
        }

        fn hex_word(i: &str) -> IResult<&str, &str> {
            take_while_m_n(4, 4, hex_digit)(i)
        }

        /// `a:b:c:d:e:f`, `a-b-c-d-e-f`, `a.b.c.d.e.f` (1-2 hex digits each) or `abcd.abcd.abcd`.
        pub fn mac(i: &str) -> IResult<&str, &str> {
            let sep = |c| recognize(pair(hex_byte, count(preceded(char(c), hex_byte), 5)));
            alt((
                sep(':'),
                sep('-'),
                sep('.'),
                recognize(tuple((
                    hex_word,
                    preceded(char('.'), hex_word),
                    preceded(char('.'), hex_word),
                ))),
            ))(i)
        }

        pub fn name(i: &str) -> IResult<&str, &str> {
            let (_, run) = recognize(pair(
                take_while_m_n(1, 1, |c: char| c.is_ascii_alphanumeric()),
                opt(take_while1(|c: char| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
                })),
            ))(i)?;
            // The last character must be alphanumeric or a dot.
            let trimmed = run.trim_end_matches(['-', '_']);
            let n = trimmed.len().max(1);
            Ok((&i[n..], &i[..n]))
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn scanners_match_the_nom_grammar(
            text in "[0-9a-fA-FxXgz:._-]{0,24}|([0-9a-fA-F]{1,5}[:.-]){0,7}[0-9a-fxXg]{0,5}"
        ) {
            let len = |r: nom::IResult<&str, &str>| r.map_or(0, |(_, m)| m.len());
            let b = text.as_bytes();
            proptest::prop_assert_eq!(number_len(b), len(nom_grammar::number(&text)));
            proptest::prop_assert_eq!(dotted_len(b), len(nom_grammar::dotted(&text)));
            proptest::prop_assert_eq!(mac_len(b), len(nom_grammar::mac(&text)));
            let name = nom_grammar::name(&text).map_or(0, |(_, m)| m.len());
            proptest::prop_assert_eq!(name_len(b), name);
        }
    }

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn keywords_numbers_and_addresses_are_told_apart_like_scanner_l() {
        assert_eq!(
            toks("tcp port 0x50"),
            vec![Tok::Kw(Kw::Tcp), Tok::Kw(Kw::Port), Tok::Num(80)]
        );
        assert_eq!(toks("10.0.0.1"), vec![Tok::Hid("10.0.0.1".into())]);
        assert_eq!(toks("1.2.3.4.5"), vec![Tok::Id("1.2.3.4.5".into())]);
        assert_eq!(toks("tcp-syn"), vec![Tok::Num(2)]);
        assert_eq!(toks("len-1"), vec![Tok::Id("len-1".into())]);
        assert_eq!(toks("010"), vec![Tok::Num(8)]);
        assert_eq!(toks("\\tcp"), vec![Tok::Id("tcp".into())]);
        assert_eq!(
            toks("ab:cd:ef:0:0:1"),
            vec![Tok::Eid([0xab, 0xcd, 0xef, 0, 0, 1])]
        );
        assert_eq!(toks("fe80::/10")[0], Tok::Hid6("fe80::".parse().unwrap()));
        assert_eq!(
            toks("ip[2:2]"),
            vec![
                Tok::Kw(Kw::Ip),
                Tok::P(Punct::LBracket),
                Tok::Num(2),
                Tok::P(Punct::Colon),
                Tok::Num(2),
                Tok::P(Punct::RBracket)
            ]
        );
        assert_eq!(toks("a&&!b")[1], Tok::Kw(Kw::And));
        assert_eq!(toks("a!=b")[1], Tok::P(Punct::Ne));
    }

    #[test]
    fn bad_numbers_and_addresses_are_errors_at_their_span() {
        let e = tokenize("ip[0] = 08").unwrap_err();
        assert_eq!(e.span, Span::new(8, 10));
        assert!(tokenize("4294967296").is_err());
        let e = tokenize("ether host ab:cd:ef:0g:00:00").unwrap_err();
        assert_eq!(e.span.start, 11);
        assert!(tokenize("host ab:cd:ef:00:00").is_err());
        assert!(tokenize("tcp \u{e9}").is_err());
    }
}
