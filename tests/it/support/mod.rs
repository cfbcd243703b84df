pub mod bootnet;
pub mod controller;
pub mod db;
pub mod ipmi_sim;
pub mod netns;
