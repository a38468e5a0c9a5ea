//! Modbus transport: a client over TCP, RTU over TCP or a serial port ([`ModbusClient`]), SunSpec discovery
//! ([`sunspec::discover`]) and a register-bank server ([`server::serve`]) used by
//! the simulator and tests.

pub mod client;
pub mod server;
pub mod sunspec;

pub use client::{Framing, Link, ModbusClient, ModbusError, SerialLine};
pub use sunspec::{discover, DiscoveredModel};

/// Most registers one read request may ask for (Modbus application protocol, functions 03/04).
pub const MAX_READ_WORDS: u16 = 125;
/// Most registers one function 16 request may carry.
pub const MAX_WRITE_WORDS: u16 = 123;
pub mod read_plan;
