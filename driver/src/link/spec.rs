//! Parsing link specifications: `tap:NAME`, `afpacket:IFNAME`, `pcap:IN.pcap[,OUT.pcap]`,
//! `virtual:PATH[,PEER]`.
//!
//! A spec that parses names something that could exist; whether it does is for
//! [`super::open`] to find out. Every [`LinkSpec`] displays as a string that parses back to
//! itself.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Linux interface names are at most 15 bytes (`IFNAMSIZ` is 16, with the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Unix socket paths are at most 107 bytes (`sun_path` is 108, with the terminating NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Which link the driver should own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkSpec {
    /// A TAP device, created if it does not exist (needs `CAP_NET_ADMIN`).
    Tap {
        /// Interface name.
        name: String,
    },
    /// AF_PACKET with a PACKET_MMAP ring on an existing interface (needs `CAP_NET_RAW`).
    AfPacket {
        /// Interface name.
        ifname: String,
    },
    /// Replay a capture as received traffic; optionally record transmitted frames.
    Pcap {
        /// Capture to replay (pcap or pcapng).
        input: PathBuf,
        /// Where to record transmitted frames (pcap), if anywhere.
        output: Option<PathBuf>,
    },
    /// A Unix datagram socket bound at `path`; each datagram is one Ethernet frame.
    Virtual {
        /// Where to bind.
        path: PathBuf,
        /// Fixed peer socket to send to; without it, the driver sends to whoever last sent
        /// to it (a test host, say).
        peer: Option<PathBuf>,
    },
}

/// Why a link spec does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkSpecError {
    /// No `KIND:` prefix.
    #[error("link `{0}` has no kind: expected tap:NAME, afpacket:IFNAME, pcap:IN[,OUT] or virtual:PATH[,PEER]")]
    MissingKind(String),
    /// The kind is not one we know.
    #[error("unknown link kind `{0}`: expected tap, afpacket, pcap or virtual")]
    UnknownKind(String),
    /// Nothing after `KIND:`, or an empty part between commas.
    #[error("link kind `{0}` needs an argument: {1}")]
    MissingArgument(&'static str, &'static str),
    /// More comma-separated parts than the kind takes.
    #[error("link kind `{kind}` takes at most {max} comma-separated parts, got `{argument}`")]
    TooManyParts {
        /// The kind.
        kind: &'static str,
        /// Parts allowed.
        max: usize,
        /// The argument as given.
        argument: String,
    },
    /// Not a valid Linux interface name.
    #[error("`{name}` is not a valid interface name: {reason}")]
    BadInterfaceName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A socket path too long for `sun_path`.
    #[error(
        "socket path `{path}` is {len} bytes; Unix sockets allow at most {MAX_SOCKET_PATH_LEN}"
    )]
    SocketPathTooLong {
        /// The path as given.
        path: String,
        /// Its length in bytes.
        len: usize,
    },
}

fn interface_name(name: &str) -> Result<String, LinkSpecError> {
    // The rules of the kernel's dev_valid_name().
    let reason = if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains `/`, `:`, NUL or whitespace")
    } else if name.contains(',') {
        Some("contains `,`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LinkSpecError::BadInterfaceName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(name.to_string()),
    }
}

fn socket_path(path: &str) -> Result<PathBuf, LinkSpecError> {
    if path.len() > MAX_SOCKET_PATH_LEN {
        return Err(LinkSpecError::SocketPathTooLong {
            path: path.to_string(),
            len: path.len(),
        });
    }
    Ok(PathBuf::from(path))
}

/// Splits `argument` at commas into one or two non-empty parts.
fn one_or_two<'a>(
    kind: &'static str,
    argument: &'a str,
    what: &'static str,
) -> Result<(&'a str, Option<&'a str>), LinkSpecError> {
    let mut parts = argument.split(',');
    let first = parts.next().unwrap_or("");
    let second = parts.next();
    if parts.next().is_some() {
        return Err(LinkSpecError::TooManyParts {
            kind,
            max: 2,
            argument: argument.to_string(),
        });
    }
    if first.is_empty() || second == Some("") {
        return Err(LinkSpecError::MissingArgument(kind, what));
    }
    Ok((first, second))
}

impl FromStr for LinkSpec {
    type Err = LinkSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, argument) = s
            .split_once(':')
            .ok_or_else(|| LinkSpecError::MissingKind(s.to_string()))?;
        match kind {
            "tap" | "afpacket" => {
                let kind = if kind == "tap" { "tap" } else { "afpacket" };
                if argument.is_empty() {
                    return Err(LinkSpecError::MissingArgument(kind, "an interface name"));
                }
                let name = interface_name(argument)?;
                Ok(if kind == "tap" {
                    LinkSpec::Tap { name }
                } else {
                    LinkSpec::AfPacket { ifname: name }
                })
            }
            "pcap" => {
                let (input, output) = one_or_two(
                    "pcap",
                    argument,
                    "a capture to replay, then optionally a file to record into",
                )?;
                Ok(LinkSpec::Pcap {
                    input: input.into(),
                    output: output.map(PathBuf::from),
                })
            }
            "virtual" => {
                let (path, peer) = one_or_two(
                    "virtual",
                    argument,
                    "a socket path, then optionally the peer's",
                )?;
                Ok(LinkSpec::Virtual {
                    path: socket_path(path)?,
                    peer: peer.map(socket_path).transpose()?,
                })
            }
            other => Err(LinkSpecError::UnknownKind(other.to_string())),
        }
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkSpec::Tap { name } => write!(f, "tap:{name}"),
            LinkSpec::AfPacket { ifname } => write!(f, "afpacket:{ifname}"),
            LinkSpec::Pcap { input, output } => {
                write!(f, "pcap:{}", input.display())?;
                if let Some(output) = output {
                    write!(f, ",{}", output.display())?;
                }
                Ok(())
            }
            LinkSpec::Virtual { path, peer } => {
                write!(f, "virtual:{}", path.display())?;
                if let Some(peer) = peer {
                    write!(f, ",{}", peer.display())?;
                }
                Ok(())
            }
        }
    }
}
