//! What became of a transmitted frame: the status the driver writes into the completion ring.
//!
//! The whole vocabulary is one table, [`for_each_tx_status!`]: each row gives the variant, its
//! code in the completion ring (the ABI: a code never changes meaning), the counter name
//! `netmux ls` and `netmux stat` show, and its documentation. The enum, [`TxStatus::code`],
//! [`TxStatus::from_code`], [`TxStatus::name`] and [`TxStatus::ALL`] are generated from it, so
//! they cannot drift apart. A code this version does not know is kept as
//! [`TxStatus::Unknown`], never an error (a newer driver may report more reasons).

/// Calls `$m!` with every transmit status as `Variant = code, "counter-name", "doc";`.
#[macro_export]
macro_rules! for_each_tx_status {
    ($m:ident) => {
        $m! {
            Sent = 0, "sent", "The frame was put on the link.";
            RejectedSpoofedSourceMac = 1, "spoofed-source-mac",
                "Rejected: the source MAC address is not the queue's.";
            RejectedSourceIp = 2, "source-ip", "Rejected: the source IP address is not the queue's.";
            RejectedUnownedSourcePort = 3, "unowned-source-port",
                "Rejected: the source port is not owned by the queue.";
            RejectedEthertypeNotGranted = 4, "ethertype-not-granted",
                "Rejected: the queue was not granted this ethertype.";
            RejectedFragment = 5, "fragment",
                "Rejected: an IP fragment the driver could not check as part of a whole datagram.";
            RejectedByFilter = 6, "filter",
                "Rejected: no installed tx filter accepted the frame (no more specific reason known).";
            RejectedMalformed = 7, "malformed",
                "Rejected: the slots did not form a valid frame, or the frame is shorter than its headers say or longer than the link carries.";
            LinkError = 8, "link-error", "Accepted, but the link failed to send it.";
            LinkDown = 9, "link-down",
                "Accepted, but the link is down or gone (the driver keeps the queue and sends again once the link is back).";
            RejectedByFirewall = 10, "firewall",
                "Rejected: an administrator's firewall rule blocked it (after the queue's own transmit check passed).";
            RejectedTooLargeForOverlay = 11, "too-large-for-overlay",
                "Rejected: the frame is longer than its overlay's MTU allows (VXLAN is never fragmented).";
            RejectedNoMapping = 12, "no-mapping",
                "Rejected: the overlay has no mapping for the destination (or no underlay address to send from).";
        }
    };
}

macro_rules! define_tx_status {
    ($($variant:ident = $code:literal, $name:literal, $doc:literal;)*) => {
        /// Outcome of one transmitted frame, as reported in the completion ring.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum TxStatus {
            $(#[doc = $doc] $variant,)*
            /// A status code this version does not know (from a newer driver).
            Unknown(u32),
        }

        impl TxStatus {
            /// Every known status, in code order.
            pub const ALL: &'static [TxStatus] = &[$(TxStatus::$variant,)*];

            /// The code stored in the completion ring.
            pub const fn code(self) -> u32 {
                match self {
                    $(TxStatus::$variant => $code,)*
                    TxStatus::Unknown(code) => code,
                }
            }

            /// The status for a code read from the completion ring.
            pub const fn from_code(code: u32) -> Self {
                match code {
                    $($code => TxStatus::$variant,)*
                    other => TxStatus::Unknown(other),
                }
            }

            /// The counter name (`netmux ls`, `netmux stat`, logs).
            pub const fn name(self) -> &'static str {
                match self {
                    $(TxStatus::$variant => $name,)*
                    TxStatus::Unknown(_) => "unknown",
                }
            }
        }
    };
}

for_each_tx_status!(define_tx_status);

impl TxStatus {
    /// Whether the frame went out.
    pub fn is_sent(self) -> bool {
        self == Self::Sent
    }

    /// Index of a known status in [`TxStatus::ALL`] (its code); `None` for an unknown one.
    pub fn index(self) -> Option<usize> {
        match self {
            TxStatus::Unknown(_) => None,
            known => Some(known.code() as usize),
        }
    }
}

impl std::fmt::Display for TxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxStatus::Unknown(code) => write!(f, "unknown status {code}"),
            known => f.write_str(known.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_the_indices_of_all() {
        for (i, s) in TxStatus::ALL.iter().enumerate() {
            assert_eq!(s.code() as usize, i);
            assert_eq!(TxStatus::from_code(s.code()), *s);
            assert_eq!(s.index(), Some(i));
        }
        assert_eq!(TxStatus::from_code(999), TxStatus::Unknown(999));
        assert_eq!(TxStatus::Unknown(999).code(), 999);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = TxStatus::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), TxStatus::ALL.len());
    }
}
