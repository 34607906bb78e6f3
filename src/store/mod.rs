pub mod buf;
pub mod catalog;
pub mod chunks;
pub mod treehash;
