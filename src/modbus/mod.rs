//! Modbus transport: TCP client, SunSpec discovery and a register-bank server.
