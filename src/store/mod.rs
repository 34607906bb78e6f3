pub mod access;
pub mod buf;
pub mod catalog;
pub mod chunks;
pub mod crc;
pub mod guard;
pub mod spares;
pub mod treehash;
