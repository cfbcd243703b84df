pub mod bootnet;
pub mod controller;
pub mod db;
pub mod image_server;
pub mod ipmi_sim;
pub mod machines;
pub mod netns;
pub mod vm;
