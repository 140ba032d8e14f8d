//! The netmux driver: owns the link, reassembles and classifies received frames, and checks
//! every transmitted frame on a private copy.

pub mod reassembly;
