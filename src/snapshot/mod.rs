pub mod online;
