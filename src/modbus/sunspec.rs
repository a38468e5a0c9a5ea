//! SunSpec discovery: find the "SunS" marker and walk the chain of model headers.

use super::client::{ModbusClient, ModbusError};
use crate::registers::Table;

/// Where discovery looks for the marker, in order (the SunSpec-recommended base first).
pub const BASES: [u16; 3] = [40000, 0, 50000];
/// "SunS" as two big-endian registers.
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];
/// A longer chain is taken for garbage rather than a real device.
pub const MAX_MODELS: usize = 64;
const END_ID: u16 = 0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveredModel {
    pub id: u16,
    /// Address of the model's ID register.
    pub addr: u16,
    /// The model's L: words after the ID and L registers.
    pub len: u16,
}

impl DiscoveredModel {
    /// Words of the model as the device declares it, ID and L registers
    /// included: reads and writes must stay inside them, whatever length
    /// ped's own definition of the model has (an older revision is shorter).
    pub fn block_len(&self) -> u16 {
        self.len.saturating_add(2)
    }
}

/// Finds the SunSpec base and lists the models in device order.
///
/// An exception while probing a base moves on to the next base; a timeout or
/// I/O error is returned at once (the connection is then unusable). The chain
/// ends at id 0xFFFF, or cleanly at an exception on the next header, which some
/// devices send instead of an end marker.
pub async fn discover(
    client: &mut ModbusClient,
    unit: u8,
) -> Result<Vec<DiscoveredModel>, ModbusError> {
    let mut found = None;
    for base in BASES {
        match client.read(unit, Table::Holding, base, 2).await {
            Ok(words) if words == MARKER => {
                found = Some(base);
                break;
            }
            Ok(_) | Err(ModbusError::Exception { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    let Some(base) = found else {
        return Err(ModbusError::Protocol(format!(
            "no SunSpec marker at {BASES:?} on unit {unit}"
        )));
    };
    let mut models = Vec::new();
    let mut addr = u32::from(base) + 2;
    loop {
        if addr + 1 > 0xFFFF {
            return Err(ModbusError::Protocol(format!(
                "SunSpec chain runs past register 65535 (header at {addr})"
            )));
        }
        let header = match client.read(unit, Table::Holding, addr as u16, 2).await {
            Ok(h) => h,
            Err(ModbusError::Exception { .. }) => break,
            Err(e) => return Err(e),
        };
        let (id, len) = (header[0], header[1]);
        if id == END_ID {
            break;
        }
        if models.len() == MAX_MODELS {
            return Err(ModbusError::Protocol(format!(
                "SunSpec chain longer than {MAX_MODELS} models"
            )));
        }
        if addr + 2 + u32::from(len) > 0x1_0000 {
            return Err(ModbusError::Protocol(format!(
                "SunSpec model {id} at {addr} (L = {len}) runs past register 65535"
            )));
        }
        models.push(DiscoveredModel {
            id,
            addr: addr as u16,
            len,
        });
        addr += 2 + u32::from(len);
    }
    Ok(models)
}
