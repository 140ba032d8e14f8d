//! The netmux driver: owns the link, reassembles and classifies received frames, and checks
//! every transmitted frame on a private copy.
#![deny(unsafe_code)]

pub mod capture;
pub mod cli;
pub mod daemon;
pub mod link;
pub mod reassembly;
pub mod ring;
mod sys;
