//! Overlays in netd: the overlays netd created at the driver, and the mapping service
//! (illumos varpd's role) that tells the driver where each overlay MAC lives.
//!
//! Like the rest of netd's core, [`OverlayService`] does no I/O but mapping files (read, and
//! written for `overlay map`):
//! it decides which driver requests to make, and the shell ([`crate::server`]) carries them
//! out. Every [`POLL_INTERVAL`] the shell asks the driver which MACs it waits for
//! ([`DriverRequest::OverlayPoll`]); [`OverlayService::answer`] turns the misses into
//! mappings, and [`OverlayService::reload`] notices a changed mapping file, parses it and,
//! when it is good, has the driver flush its cache and take the new proxy ARP table. A bad
//! file is refused with its line and field, the overlay shows as degraded, and the last good
//! mapping stays in use until the file is fixed. SIGHUP reads every file again
//! ([`OverlayService::reload_all`]); `netmux overlay map set|rm` ([`OverlayService::change`])
//! rewrites a file atomically in the same format.
//!
//! With the `etcd` feature, an overlay's mappings may live in etcd instead ([`etcd`]):
//! [`OverlayService::publish`] hands each backend this host's own instances, and
//! [`OverlayService::reload`] takes in what its watch saw.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use netmux_proto::driver::DriverRequest;
use netmux_proto::overlay::{
    MappingChange, MappingEntry, OverlayCounters, OverlayInfo, OverlayMapping, OverlayMappings,
    OverlayPollReply, OverlaySpec, OverlayView,
};

use crate::instance::OverlayEntry;

/// How often the shell polls the driver for misses and looks at mapping files.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes VXLAN over IPv4 adds to an inner frame's IP packet (outer Ethernet, IPv4, UDP,
/// VXLAN): the overlay MTU is the link's less this.
pub const VXLAN_OVERHEAD: u16 = 50;
/// Overlays netd creates (the driver's limit).
pub const MAX_OVERLAYS: usize = 1024;
/// The largest mapping file read: a million entries of about 100 bytes.
pub const MAX_FILE_BYTES: u64 = 128 << 20;

/// Why an overlay cannot be created or changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    /// The name is not 1 to 31 characters of `[A-Za-z0-9:_-]`.
    #[error("bad overlay name {0:?}: 1 to 31 characters of A-Z a-z 0-9 : _ -")]
    BadName(String),
    /// An overlay with this name exists.
    #[error("an overlay named {0:?} exists")]
    Exists(String),
    /// Another overlay has this VNI.
    #[error("VNI {0} belongs to overlay {1:?}")]
    VniInUse(u32, String),
    /// The VNI does not fit in 24 bits.
    #[error("VNI {0} is out of range (0 to 16777215)")]
    BadVni(u32),
    /// The MTU does not fit the link.
    #[error("MTU {0}: an overlay MTU must be 68 to {1} (the link's MTU less 50 bytes of VXLAN)")]
    BadMtu(u16, u16),
    /// Port 0.
    #[error("the VXLAN port must be 1 to 65535")]
    BadPort,
    /// The mapping is not `files:/absolute/path`.
    #[error("mapping {0:?}: {1}")]
    BadMapping(String, String),
    /// The mapping file is wrong.
    #[error("mapping file {0}: {1}")]
    BadFile(PathBuf, String),
    /// No such overlay.
    #[error("no overlay named {0:?}")]
    NotFound(String),
    /// Too many overlays.
    #[error("at most {MAX_OVERLAYS} overlays")]
    Limit,
    /// A mapping change that would make the mapping wrong (the same overlay address for two
    /// MACs, a multicast MAC).
    #[error("overlay {0:?}: {1}")]
    BadChange(String, String),
    /// No entry for this MAC.
    #[error("overlay {0:?} has no mapping for {1}")]
    NoEntry(String, String),
    /// The mapping file could not be written.
    #[error("writing mapping file {0}: {1}")]
    Write(PathBuf, String),
}

/// Where an overlay's mappings come from.
#[derive(Debug)]
enum Backend {
    /// A varpd files-plugin JSON file.
    Files {
        path: PathBuf,
        /// Its modification time and length when last read.
        seen: Option<(SystemTime, u64)>,
    },
    /// etcd ([`etcd`]).
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdBackend),
}

/// An instance living on an overlay, as [`OverlayService::publish`] takes it: the overlay's
/// VNI, the instance's MAC and its IPv4 address.
pub type OwnInstance = (u32, [u8; 6], Option<std::net::Ipv4Addr>);

/// What a mapping change became.
#[derive(Debug)]
pub enum Changed {
    /// Made: these requests give the driver the new mapping.
    Now(Vec<DriverRequest>),
    /// Sent to the backend, which answers whether it took it; the driver follows when the
    /// backend reports the change back.
    Later(tokio::sync::oneshot::Receiver<Result<(), ChangeError>>),
}

/// Why a backend did not take a change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// `rm` of a MAC the backend has no entry for.
    #[error("no mapping for {0}")]
    NoEntry(String),
    /// The backend cannot be reached, or failed: why.
    #[error("the mapping backend did not take the change: {0}")]
    Backend(String),
}

/// One overlay netd holds.
#[derive(Debug)]
struct Overlay {
    spec: OverlaySpec,
    backend: Backend,
    mapping: files::Mapping,
    /// Why the backend's current content is not in use.
    degraded: Option<String>,
    counters: OverlayCounters,
}

impl Overlay {
    fn info(&self) -> OverlayInfo {
        OverlayInfo {
            vni: self.spec.vni,
            port: self.spec.port,
            mtu: self.spec.mtu.unwrap_or(0),
        }
    }

    /// Every address proxy ARP answers for.
    fn arp(&self) -> Vec<([u8; 4], [u8; 6])> {
        self.mapping
            .iter()
            .filter_map(|(mac, e)| e.arp.map(|a| (a.octets(), *mac)))
            .collect()
    }

    /// The whole table for the driver: flush the cache, take the proxy ARP table.
    fn refresh(&self) -> DriverRequest {
        DriverRequest::SetOverlayMappings(OverlayMappings {
            vni: self.spec.vni,
            flush: true,
            mappings: Vec::new(),
            arp: Some(self.arp()),
            ndp: Some(self.ndp()),
            dhcp: Some(
                self.mapping
                    .iter()
                    .filter_map(|(mac, e)| e.dhcp_proxy.map(|p| (*mac, p)))
                    .collect(),
            ),
        })
    }

    /// Every address proxy NDP answers for.
    fn ndp(&self) -> Vec<([u8; 16], [u8; 6])> {
        self.mapping
            .iter()
            .filter_map(|(mac, e)| e.ndp.map(|a| (a.octets(), *mac)))
            .collect()
    }

    fn target(&self, mac: [u8; 6]) -> Option<([u8; 4], u16)> {
        let e = self.mapping.get(&mac)?;
        Some((e.ip.octets(), e.port?))
    }
}

/// An entry as the protocol carries it.
fn entry_view(mac: [u8; 6], e: &files::Entry) -> MappingEntry {
    MappingEntry {
        mac,
        ip: e.ip,
        port: e.port,
        arp: e.arp,
        ndp: e.ndp,
        dhcp_proxy: e.dhcp_proxy,
    }
}

/// `mapping` with `change` made, checked as a mapping file would be.
fn changed(
    name: &str,
    mapping: &files::Mapping,
    change: &MappingChange,
) -> Result<files::Mapping, OverlayError> {
    let mut next = mapping.clone();
    match change {
        MappingChange::Set(e) => {
            if e.mac[0] & 1 != 0 {
                return Err(OverlayError::BadChange(
                    name.into(),
                    "an overlay MAC must be a unicast address".into(),
                ));
            }
            if e.ip.is_multicast() || e.ip.is_broadcast() || e.ip.is_unspecified() {
                return Err(OverlayError::BadChange(
                    name.into(),
                    format!("{} is not a unicast underlay address", e.ip),
                ));
            }
            if e.port == Some(0) {
                return Err(OverlayError::BadPort);
            }
            if let Some(a) = e.arp {
                if let Some((other, _)) =
                    next.iter().find(|(m, o)| **m != e.mac && o.arp == Some(a))
                {
                    return Err(OverlayError::BadChange(
                        name.into(),
                        format!(
                            "{a} is already {}'s address",
                            crate::instance::mac_text(*other)
                        ),
                    ));
                }
            }
            next.insert(
                e.mac,
                files::Entry {
                    ip: e.ip,
                    port: e.port,
                    arp: e.arp,
                    ndp: e.ndp,
                    dhcp_proxy: e.dhcp_proxy,
                },
            );
        }
        MappingChange::Remove(mac) => {
            if next.remove(mac).is_none() {
                return Err(OverlayError::NoEntry(
                    name.into(),
                    crate::instance::mac_text(*mac),
                ));
            }
        }
    }
    Ok(next)
}

/// Writes `text` to `path` atomically: a temporary file beside it (with the old file's
/// permissions), synced, then renamed over it, so netd and other readers see the old
/// content or the new, never a part.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.netmux-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Applies what an `etcd` backend reported to an overlay's mapping and state; returns
/// whether the mapping changed (the driver's cache must follow).
#[cfg(feature = "etcd")]
fn apply_etcd(
    name: &str,
    events: Vec<etcd::Event>,
    mapping: &mut files::Mapping,
    degraded: &mut Option<String>,
) -> bool {
    let mut changed = false;
    for event in events {
        match event {
            etcd::Event::Snapshot(m) => {
                if degraded.take().is_some() {
                    tracing::info!(overlay = %name, entries = m.len(), "etcd mappings in use");
                }
                if *mapping != m {
                    *mapping = m;
                    changed = true;
                }
            }
            etcd::Event::Put(mac, e) => {
                if mapping.insert(mac, e) != Some(e) {
                    tracing::debug!(overlay = %name, mac = %crate::instance::mac_text(mac), ip = %e.ip, "etcd: mapping set");
                    changed = true;
                }
            }
            etcd::Event::Delete(mac) => {
                if mapping.remove(&mac).is_some() {
                    tracing::debug!(overlay = %name, mac = %crate::instance::mac_text(mac), "etcd: mapping gone");
                    changed = true;
                }
            }
            etcd::Event::Down(why) => {
                *degraded = Some(format!(
                    "etcd unreachable, {} cached mappings kept: {why}",
                    mapping.len()
                ));
            }
        }
    }
    changed
}

/// Reads a mapping file, refusing one larger than [`MAX_FILE_BYTES`].
fn read_mapping(path: &Path) -> Result<(files::Mapping, (SystemTime, u64)), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let seen = (
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        meta.len(),
    );
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mapping = files::parse(&text).map_err(|e| e.to_string())?;
    Ok((mapping, seen))
}

/// Every overlay, by name. See the module documentation.
#[derive(Debug, Default)]
pub struct OverlayService {
    overlays: BTreeMap<String, Overlay>,
    /// The lease TTL of the `etcd` backend ([`crate::config::Config::overlay_lease_ttl`]).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    lease_ttl: Duration,
    /// The driver's count of VXLAN datagrams for no overlay, and of malformed ones.
    unknown_vni: u64,
    malformed: u64,
}

impl OverlayService {
    /// No overlays yet; an `etcd` backend will keep this host's entries under a lease of
    /// `lease_ttl`.
    pub fn with_lease_ttl(lease_ttl: Duration) -> OverlayService {
        OverlayService {
            lease_ttl,
            ..OverlayService::default()
        }
    }

    /// Whether no overlay exists (nothing to poll).
    pub fn is_empty(&self) -> bool {
        self.overlays.is_empty()
    }

    /// The VNI and MTU of an overlay.
    pub fn get(&self, name: &str) -> Option<(u32, u16)> {
        self.overlays
            .get(name)
            .map(|o| (o.spec.vni, o.spec.mtu.unwrap_or(0)))
    }

    /// Checks `spec` against the link's MTU and every other overlay, reads its mapping, and
    /// adds it; returns the requests that create it at the driver. `spec.mtu` is filled in.
    pub fn create(
        &mut self,
        spec: OverlaySpec,
        link_mtu: u16,
    ) -> Result<Vec<DriverRequest>, OverlayError> {
        self.add(spec, link_mtu, false)
    }

    /// [`OverlayService::create`] for an overlay kept in netd's configuration file: a mapping
    /// file that is missing or bad leaves the overlay degraded with no mappings (until the
    /// file is fixed) instead of keeping netd from starting.
    pub fn restore(
        &mut self,
        spec: OverlaySpec,
        link_mtu: u16,
    ) -> Result<Vec<DriverRequest>, OverlayError> {
        self.add(spec, link_mtu, true)
    }

    /// Every overlay kept across restarts (not temporary).
    pub fn kept(&self) -> Vec<OverlayEntry> {
        self.overlays
            .values()
            .filter(|o| !o.spec.temporary)
            .map(|o| OverlayEntry::of(&o.spec))
            .collect()
    }

    /// Whether an overlay is forgotten when netd stops.
    pub fn is_temporary(&self, name: &str) -> bool {
        self.overlays.get(name).is_some_and(|o| o.spec.temporary)
    }

    fn add(
        &mut self,
        mut spec: OverlaySpec,
        link_mtu: u16,
        degraded_ok: bool,
    ) -> Result<Vec<DriverRequest>, OverlayError> {
        crate::instance::check_name(&spec.name)
            .map_err(|_| OverlayError::BadName(spec.name.clone()))?;
        if self.overlays.contains_key(&spec.name) {
            return Err(OverlayError::Exists(spec.name));
        }
        if let Some(o) = self.overlays.values().find(|o| o.spec.vni == spec.vni) {
            return Err(OverlayError::VniInUse(spec.vni, o.spec.name.clone()));
        }
        if self.overlays.len() >= MAX_OVERLAYS {
            return Err(OverlayError::Limit);
        }
        if spec.vni >= 1 << 24 {
            return Err(OverlayError::BadVni(spec.vni));
        }
        if spec.port == 0 {
            return Err(OverlayError::BadPort);
        }
        let largest = link_mtu.saturating_sub(VXLAN_OVERHEAD);
        let mtu = spec.mtu.unwrap_or(largest);
        if !(68..=largest).contains(&mtu) {
            return Err(OverlayError::BadMtu(mtu, largest));
        }
        spec.mtu = Some(mtu);
        let path = match spec.mapping.split_once(':') {
            Some(("files", path)) if Path::new(path).is_absolute() => PathBuf::from(path),
            Some(("files", _)) => {
                return Err(OverlayError::BadMapping(
                    spec.mapping,
                    "the files backend needs an absolute path".into(),
                ))
            }
            #[cfg(feature = "etcd")]
            Some(("etcd", urls)) => {
                let endpoints = etcd::parse_endpoints(urls)
                    .map_err(|why| OverlayError::BadMapping(spec.mapping.clone(), why))?;
                let ttl = if self.lease_ttl.is_zero() {
                    crate::config::DEFAULT_OVERLAY_LEASE_TTL
                } else {
                    self.lease_ttl
                };
                let backend = etcd::EtcdBackend::start(&spec.name, spec.vni, endpoints, ttl)
                    .map_err(|e| {
                        OverlayError::BadMapping(spec.mapping.clone(), format!("starting: {e}"))
                    })?;
                return Ok(self.insert(
                    spec,
                    Backend::Etcd(backend),
                    files::Mapping::new(),
                    Some("waiting for etcd's first listing".into()),
                ));
            }
            #[cfg(not(feature = "etcd"))]
            Some(("etcd", _)) => {
                return Err(OverlayError::BadMapping(
                    spec.mapping,
                    "this netd was built without the etcd backend (cargo feature `etcd`)".into(),
                ))
            }
            _ => {
                return Err(OverlayError::BadMapping(
                    spec.mapping,
                    "the mapping backend must be files:/absolute/path.json or \
                     etcd:http://HOST:PORT[,http://HOST:PORT]"
                        .into(),
                ))
            }
        };
        let (mapping, seen, degraded) = match read_mapping(&path) {
            Ok((mapping, seen)) => (mapping, Some(seen), None),
            Err(why) if degraded_ok => {
                tracing::warn!(
                    overlay = %spec.name,
                    file = %path.display(),
                    "mapping file refused; the overlay has no mappings until it is fixed: {why}"
                );
                let why = format!("{}: {why}", path.display());
                (files::Mapping::new(), None, Some(why))
            }
            Err(why) => return Err(OverlayError::BadFile(path, why)),
        };
        Ok(self.insert(spec, Backend::Files { path, seen }, mapping, degraded))
    }

    /// Adds a checked overlay; returns the requests that create it at the driver.
    fn insert(
        &mut self,
        spec: OverlaySpec,
        backend: Backend,
        mapping: files::Mapping,
        degraded: Option<String>,
    ) -> Vec<DriverRequest> {
        let overlay = Overlay {
            backend,
            mapping,
            degraded,
            counters: OverlayCounters {
                vni: spec.vni,
                ..OverlayCounters::default()
            },
            spec,
        };
        let requests = vec![DriverRequest::SetOverlay(overlay.info()), overlay.refresh()];
        self.overlays.insert(overlay.spec.name.clone(), overlay);
        requests
    }

    /// Tells every `etcd` backend this host's own entries: for each instance on an overlay
    /// (`(vni, MAC, IPv4 address)`), its MAC at `underlay` and the overlay's VXLAN port. A
    /// backend writes them only when they changed. Nothing is published without an underlay
    /// address.
    pub fn publish(&mut self, underlay: Option<std::net::Ipv4Addr>, own: &[OwnInstance]) {
        #[cfg(feature = "etcd")]
        for o in self.overlays.values_mut() {
            let Backend::Etcd(backend) = &mut o.backend else {
                continue;
            };
            let entries = match underlay {
                None => BTreeMap::new(),
                Some(ip) => own
                    .iter()
                    .filter(|(vni, ..)| *vni == o.spec.vni)
                    .map(|(_, mac, arp)| {
                        (
                            *mac,
                            files::Entry {
                                ip,
                                port: Some(o.spec.port),
                                arp: *arp,
                                ndp: None,
                                dhcp_proxy: None,
                            },
                        )
                    })
                    .collect(),
            };
            backend.publish(entries);
        }
        #[cfg(not(feature = "etcd"))]
        let _ = (underlay, own);
    }

    /// The requests that give a new driver every overlay and its mappings, as they are now
    /// (a driver that replaced one that went away).
    pub fn install_requests(&self) -> Vec<DriverRequest> {
        self.overlays
            .values()
            .flat_map(|o| [DriverRequest::SetOverlay(o.info()), o.refresh()])
            .collect()
    }

    /// Forgets an overlay (after the driver removed it, or failed to create it).
    pub fn forget(&mut self, name: &str) {
        self.overlays.remove(name);
    }

    /// The VNI of an overlay, for removing it at the driver.
    pub fn vni(&self, name: &str) -> Result<u32, OverlayError> {
        self.overlays
            .get(name)
            .map(|o| o.spec.vni)
            .ok_or_else(|| OverlayError::NotFound(name.to_owned()))
    }

    /// The entries of an overlay's mapping as netd holds it now (only `mac`'s when given).
    pub fn mappings(
        &self,
        name: &str,
        mac: Option<[u8; 6]>,
    ) -> Result<Vec<MappingEntry>, OverlayError> {
        let o = self
            .overlays
            .get(name)
            .ok_or_else(|| OverlayError::NotFound(name.to_owned()))?;
        match mac {
            None => Ok(o.mapping.iter().map(|(m, e)| entry_view(*m, e)).collect()),
            Some(mac) => o
                .mapping
                .get(&mac)
                .map(|e| vec![entry_view(mac, e)])
                .ok_or_else(|| OverlayError::NoEntry(name.into(), crate::instance::mac_text(mac))),
        }
    }

    /// Changes one entry of an overlay's mapping at its backend; returns the requests that
    /// flush the driver's cache and give it the new proxy tables. For `files`, the file is
    /// read again (a file that is refused must be fixed first: its content is not
    /// overwritten), changed and written back atomically in the files plugin's format.
    pub fn change(&mut self, name: &str, change: &MappingChange) -> Result<Changed, OverlayError> {
        let o = self
            .overlays
            .get_mut(name)
            .ok_or_else(|| OverlayError::NotFound(name.to_owned()))?;
        let (path, seen) = match &mut o.backend {
            Backend::Files { path, seen } => (path, seen),
            #[cfg(feature = "etcd")]
            Backend::Etcd(backend) => {
                // A new entry is checked against what netd holds; whether a MAC has one to
                // remove, etcd says (netd's copy may be a moment behind).
                if let MappingChange::Set(_) = change {
                    changed(name, &o.mapping, change)?;
                }
                tracing::info!(overlay = %name, ?change, "mapping change sent to etcd");
                return Ok(Changed::Later(backend.change(change.clone())));
            }
        };
        let (current, _) =
            read_mapping(path).map_err(|why| OverlayError::BadFile(path.clone(), why))?;
        let next = changed(name, &current, change)?;
        write_atomically(path, &files::render(&next))
            .map_err(|e| OverlayError::Write(path.clone(), e.to_string()))?;
        *seen = std::fs::metadata(&*path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        tracing::info!(overlay = %name, ?change, file = %path.display(), "mapping changed");
        o.degraded = None;
        o.mapping = next;
        Ok(Changed::Now(vec![o.refresh()]))
    }

    /// Reads every `files` mapping again, changed or not (SIGHUP); returns what
    /// [`OverlayService::reload`] returns.
    pub fn reload_all(&mut self) -> Vec<DriverRequest> {
        for o in self.overlays.values_mut() {
            #[allow(irrefutable_let_patterns)] // without the `etcd` feature
            if let Backend::Files { seen, .. } = &mut o.backend {
                *seen = None;
            }
        }
        self.reload()
    }

    /// Looks at every mapping file; returns the requests that give the driver the mappings of
    /// the files that changed and are good. A bad file leaves its overlay degraded with the
    /// reason and its last good mapping in use.
    pub fn reload(&mut self) -> Vec<DriverRequest> {
        let mut requests = Vec::new();
        for o in self.overlays.values_mut() {
            let (path, seen) = match &mut o.backend {
                Backend::Files { path, seen } => (path, seen),
                #[cfg(feature = "etcd")]
                Backend::Etcd(backend) => {
                    let events = backend.drain();
                    if apply_etcd(&o.spec.name, events, &mut o.mapping, &mut o.degraded) {
                        requests.push(o.refresh());
                    }
                    continue;
                }
            };
            let now = std::fs::metadata(&*path)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
            if now == *seen {
                continue;
            }
            *seen = now;
            match read_mapping(path) {
                Ok((mapping, _)) => {
                    if o.degraded.take().is_some() {
                        tracing::info!(overlay = %o.spec.name, "mapping file good again");
                    }
                    tracing::info!(
                        overlay = %o.spec.name,
                        entries = mapping.len(),
                        "mapping file reloaded"
                    );
                    o.mapping = mapping;
                    requests.push(o.refresh());
                }
                Err(why) => {
                    tracing::warn!(
                        overlay = %o.spec.name,
                        file = %path.display(),
                        "mapping file refused, keeping the last good mapping: {why}"
                    );
                    o.degraded = Some(format!("{}: {why}", path.display()));
                }
            }
        }
        requests
    }

    /// Answers the lookups the driver waits for and keeps its counters.
    pub fn answer(&mut self, poll: OverlayPollReply) -> Vec<DriverRequest> {
        self.unknown_vni = poll.unknown_vni;
        self.malformed = poll.malformed;
        for c in poll.overlays {
            if let Some(o) = self.overlays.values_mut().find(|o| o.spec.vni == c.vni) {
                o.counters = c;
            }
        }
        let mut answers: BTreeMap<u32, Vec<OverlayMapping>> = BTreeMap::new();
        for (vni, mac) in poll.misses {
            // An overlay netd no longer knows: no answer; the driver's frames time out.
            if let Some(o) = self.overlays.values().find(|o| o.spec.vni == vni) {
                answers.entry(vni).or_default().push(OverlayMapping {
                    mac,
                    target: o.target(mac),
                });
            }
        }
        answers
            .into_iter()
            .map(|(vni, mappings)| {
                DriverRequest::SetOverlayMappings(OverlayMappings {
                    vni,
                    flush: false,
                    mappings,
                    arp: None,
                    ndp: None,
                    dhcp: None,
                })
            })
            .collect()
    }

    /// Every overlay as `netmux overlay ls` shows it; `instances` names the instances on an
    /// overlay.
    pub fn views(&self, instances: impl Fn(&str) -> Vec<String>) -> Vec<OverlayView> {
        self.overlays
            .values()
            .map(|o| OverlayView {
                spec: o.spec.clone(),
                state: match &o.degraded {
                    None => "ok".into(),
                    Some(why) => format!("degraded: {why}"),
                },
                mappings: o.mapping.len() as u64,
                instances: instances(&o.spec.name),
                counters: o.counters.clone(),
            })
            .collect()
    }

    /// The driver's counts of datagrams for no overlay and of malformed ones.
    pub fn dropped(&self) -> (u64, u64) {
        (self.unknown_vni, self.malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, vni: u32, path: &Path) -> OverlaySpec {
        OverlaySpec {
            name: name.into(),
            vni,
            port: 4789,
            mapping: format!("files:{}", path.display()),
            mtu: None,
            temporary: true,
        }
    }

    const B: [u8; 6] = [2, 0xbb, 0, 0, 0, 2];

    #[test]
    fn misses_are_answered_from_the_file_and_a_change_is_reloaded_but_a_bad_one_is_not() {
        let dir = netmux_testkit::TempDir::new("netd-overlay");
        let path = dir.join("map.json");
        std::fs::write(
            &path,
            r#"{"02:bb:00:00:00:02": {"ip": "192.0.2.2", "port": 4789, "arp": "10.0.0.2"}}"#,
        )
        .unwrap();
        let mut s = OverlayService::default();
        let created = s.create(spec("blue", 42, &path), 1500).unwrap();
        assert_eq!(
            created[0],
            DriverRequest::SetOverlay(OverlayInfo {
                vni: 42,
                port: 4789,
                mtu: 1450
            })
        );
        assert!(matches!(
            s.create(spec("red", 42, &path), 1500),
            Err(OverlayError::VniInUse(42, _))
        ));
        let answer = |s: &mut OverlayService| {
            s.answer(OverlayPollReply {
                misses: vec![(42, B), (42, [2, 0, 0, 0, 0, 9])],
                ..OverlayPollReply::default()
            })
        };
        assert_eq!(
            answer(&mut s),
            vec![DriverRequest::SetOverlayMappings(OverlayMappings {
                vni: 42,
                flush: false,
                mappings: vec![
                    OverlayMapping {
                        mac: B,
                        target: Some(([192, 0, 2, 2], 4789))
                    },
                    OverlayMapping {
                        mac: [2, 0, 0, 0, 0, 9],
                        target: None
                    },
                ],
                arp: None,
                ndp: None,
                dhcp: None,
            })]
        );
        assert!(s.reload().is_empty(), "unchanged");
        // A bad file: refused, the last good mapping stays, the overlay is degraded.
        std::fs::write(&path, "{\"02:bb:00:00:00:02\": {\"ip\": \"nowhere\"}}").unwrap();
        assert!(s.reload().is_empty());
        let v = &s.views(|_| Vec::new())[0];
        assert!(
            v.state.contains("line 1: 02:bb:00:00:00:02 ip"),
            "{}",
            v.state
        );
        assert_eq!(answer(&mut s).len(), 1);
        // Fixed, and moved: flushed and reloaded.
        std::fs::write(
            &path,
            r#"{"02:bb:00:00:00:02": {"ip": "192.0.2.3", "port": 4789, "arp": "10.0.0.2"}}"#,
        )
        .unwrap();
        let reloaded = s.reload();
        assert_eq!(
            reloaded,
            vec![DriverRequest::SetOverlayMappings(OverlayMappings {
                vni: 42,
                flush: true,
                mappings: Vec::new(),
                arp: Some(vec![([10, 0, 0, 2], B)]),
                ndp: Some(Vec::new()),
                dhcp: Some(Vec::new()),
            })]
        );
        assert_eq!(s.views(|_| Vec::new())[0].state, "ok");
    }

    #[test]
    fn an_etcd_mapping_is_refused_clearly_without_the_feature_or_with_a_bad_url() {
        let mut s = OverlayService::default();
        let mut etcd = spec("a", 1, Path::new("/x"));
        etcd.mapping = "etcd:http://127.0.0.1:2379".into();
        let e = s.create(etcd.clone(), 1500);
        #[cfg(not(feature = "etcd"))]
        assert!(
            e.as_ref()
                .is_err_and(|e| e.to_string().contains("cargo feature `etcd`")),
            "{e:?}"
        );
        #[cfg(feature = "etcd")]
        {
            assert!(e.is_ok(), "{e:?}");
            etcd.name = "b".into();
            etcd.vni = 2;
            etcd.mapping = "etcd:127.0.0.1".into();
            let e = s.create(etcd, 1500).unwrap_err();
            assert!(e.to_string().contains("host:port"), "{e}");
        }
        let mut other = spec("c", 3, Path::new("/x"));
        other.mapping = "consul:x".into();
        let e = s.create(other, 1500).unwrap_err();
        assert!(e.to_string().contains("etcd:http://"), "{e}");
    }

    #[test]
    fn a_changed_entry_is_written_back_in_the_files_format_and_checked() {
        let dir = netmux_testkit::TempDir::new("netd-overlay-change");
        let path = dir.join("map.json");
        std::fs::write(
            &path,
            r#"{"02:bb:00:00:00:02": {"ip": "192.0.2.2", "port": 4789, "arp": "10.0.0.2"}}"#,
        )
        .unwrap();
        let mut s = OverlayService::default();
        s.create(spec("blue", 42, &path), 1500).unwrap();
        let entry = MappingEntry {
            mac: [2, 0xbb, 0, 0, 0, 3],
            ip: "192.0.2.3".parse().unwrap(),
            port: Some(4789),
            arp: Some("10.0.0.3".parse().unwrap()),
            ndp: None,
            dhcp_proxy: None,
        };
        let Changed::Now(requests) = s.change("blue", &MappingChange::Set(entry)).unwrap() else {
            panic!("a file changes at once")
        };
        assert!(matches!(
            &requests[0],
            DriverRequest::SetOverlayMappings(OverlayMappings { flush: true, .. })
        ));
        assert_eq!(
            files::parse(&std::fs::read_to_string(&path).unwrap())
                .unwrap()
                .len(),
            2
        );
        assert!(
            s.reload().is_empty(),
            "its own write is not a change to reload"
        );
        assert_eq!(s.mappings("blue", Some(entry.mac)).unwrap(), vec![entry]);
        let taken = MappingEntry {
            mac: [2, 0xbb, 0, 0, 0, 4],
            arp: Some("10.0.0.2".parse().unwrap()),
            ..entry
        };
        assert!(matches!(
            s.change("blue", &MappingChange::Set(taken)),
            Err(OverlayError::BadChange(..))
        ));
        assert!(matches!(
            s.change("blue", &MappingChange::Remove([2, 0, 0, 0, 0, 9])),
            Err(OverlayError::NoEntry(..))
        ));
        s.change("blue", &MappingChange::Remove(entry.mac)).unwrap();
        assert!(s.mappings("blue", Some(entry.mac)).is_err());
        // A file that is refused is not overwritten: it must be fixed first.
        std::fs::write(&path, "{ broken").unwrap();
        assert!(matches!(
            s.change("blue", &MappingChange::Set(entry)),
            Err(OverlayError::BadFile(..))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ broken");
    }

    #[test]
    fn a_bad_spec_is_refused_with_its_reason() {
        let mut s = OverlayService::default();
        let nowhere = Path::new("/nonexistent/map.json");
        let mut too_big = spec("a", 1, nowhere);
        too_big.mtu = Some(1451);
        assert_eq!(
            s.create(too_big, 1500),
            Err(OverlayError::BadMtu(1451, 1450))
        );
        assert!(matches!(
            s.create(spec("a", 1 << 24, nowhere), 1500),
            Err(OverlayError::BadVni(_))
        ));
        let mut relative = spec("a", 1, nowhere);
        relative.mapping = "files:map.json".into();
        assert!(matches!(
            s.create(relative, 1500),
            Err(OverlayError::BadMapping(..))
        ));
        assert!(matches!(
            s.create(spec("a", 1, nowhere), 1500),
            Err(OverlayError::BadFile(..))
        ));
        assert!(s.is_empty());
    }
}
