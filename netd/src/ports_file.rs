//! netd's ports file, `RUNTIME_DIR/ports`: which uid had which port bound in which instance,
//! so that a netd started after this one (killed, crashed, restarted by `up` or systemd, on
//! the same runtime directory) keeps those ports for their uids for a grace period
//! (`timeouts.port_grace`, [`crate::config::DEFAULT_PORT_GRACE`]): a client that reconnects
//! after the restart binds its ports again, and no other uid can take them in the pause.
//!
//! Why a file and not the driver: the driver fails closed when netd's connection goes (every
//! queue and filter of that netd is dropped, R6), and under `netmux up` it ends with netd, or
//! is itself what died (`up --restart`); a file in the runtime directory, which only netd's
//! uid may change ([`crate::server::check_dir`]), outlives either process. netd writes it
//! whenever the set of bound ports changed, at most every [`crate::server::EXPIRY_TICK`], to a
//! temporary file renamed over the old one, so a reader sees the old or the new file whole,
//! never a torn one; it may miss a bind made in the last tick before a SIGKILL.
//!
//! Format: one port per line, `UID INSTANCE TRANSPORT PORT` (`1000 default udp 7000`);
//! `#` starts a comment. A line that does not parse is skipped and logged, never trusted.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::Transport;

/// The file's name inside the runtime directory.
pub const FILE_NAME: &str = "ports";

/// One bound port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The uid that bound it.
    pub uid: u32,
    /// Its instance's name.
    pub instance: String,
    /// TCP or UDP.
    pub transport: Transport,
    /// The port.
    pub port: u16,
}

/// The file of a runtime directory.
pub fn path_in(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(FILE_NAME)
}

/// The text of `entries`.
pub fn render(entries: &[Entry]) -> String {
    let mut text = String::from(
        "# netd's bound ports (uid instance transport port), kept for their uids after a restart\n",
    );
    text.reserve(entries.len() * 24);
    for e in entries {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{} {} {} {}", e.uid, e.instance, e.transport, e.port);
    }
    text
}

/// The entries of `text`, and how many lines were skipped as malformed.
pub fn parse(text: &str) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let entry = match fields.as_slice() {
            [uid, instance, transport, port] => {
                let transport = match *transport {
                    "tcp" => Some(Transport::Tcp),
                    "udp" => Some(Transport::Udp),
                    _ => None,
                };
                match (uid.parse(), transport, port.parse::<u16>()) {
                    (Ok(uid), Some(transport), Ok(port)) if port != 0 => Some(Entry {
                        uid,
                        instance: (*instance).to_owned(),
                        transport,
                        port,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        match entry {
            Some(e) => entries.push(e),
            None => bad += 1,
        }
    }
    (entries, bad)
}

/// Reads the file: no file is no entries.
pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (entries, bad) = parse(&text);
    if bad > 0 {
        tracing::warn!(file = %path.display(), lines = bad, "skipped malformed lines of the ports file");
    }
    Ok(entries)
}

/// Writes `text` to `path` whole: to a temporary file beside it (mode 0644), synced, renamed
/// over it.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_malformed_lines_are_skipped() {
        let entries = vec![
            Entry {
                uid: 0,
                instance: "default".into(),
                transport: Transport::Tcp,
                port: 80,
            },
            Entry {
                uid: 1000,
                instance: "blue".into(),
                transport: Transport::Udp,
                port: 7000,
            },
        ];
        assert_eq!(parse(&render(&entries)), (entries.clone(), 0));
        let text = format!(
            "{}1000 default sctp 9\n1000 default udp 0\nx default udp 1\n1 2 3\n1 a udp 70000\n",
            render(&entries)
        );
        assert_eq!(parse(&text), (entries, 5));
    }

    #[test]
    fn a_write_replaces_the_file_whole_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("netmux-ports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = path_in(&dir);
        assert_eq!(read(&path).unwrap(), Vec::new());
        write(&path, "1 default udp 1\n").unwrap();
        write(&path, "2 default tcp 2\n").unwrap();
        assert_eq!(read(&path).unwrap()[0].uid, 2);
        assert!(!path.with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
