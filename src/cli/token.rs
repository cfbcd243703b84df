//! `fleet token create|list|revoke|rotate`: the operator tokens (admin tokens only).

use super::client::Client;
use super::output::{new_table, or_dash, print_json};
use super::Connection;
use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use comfy_table::Cell;
use fleet::api::views::{CreateToken, IssuedTokenView, TokenView};
use fleet::store::OperatorRole;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print its secret (shown this once; the controller keeps only its hash)
    Create {
        /// The token's name: the actor of everything done with it (never reused, even revoked)
        name: String,
        #[arg(long, value_enum, default_value_t = RoleArg::Admin)]
        role: RoleArg,
        /// The token stops working this long after now (`30d`, `12h`, `90min`) [default: never]
        #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
        expires: Option<u64>,
    },
    /// Every token: name, role, created, last used, expiry, revocation (never a secret)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a token working at once (it stays listed; the last admin token cannot be revoked)
    Revoke { name: String },
    /// Give a token a new secret (printed once); the former one stops working at once
    Rotate { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Everything, managing tokens included
    Admin,
    /// GET only: machines, events, plans
    ReadOnly,
}

impl From<RoleArg> for OperatorRole {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Admin => OperatorRole::Admin,
            RoleArg::ReadOnly => OperatorRole::ReadOnly,
        }
    }
}

/// A lifetime such as `30d`, in whole seconds (humantime).
fn parse_lifetime(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text).map_err(|error| {
        format!("`{text}` is not a duration such as 30d, 12h or 90min: {error}")
    })?;
    match duration.as_secs() {
        0 => Err(format!(
            "`{text}` is less than a second: give a longer lifetime"
        )),
        seconds => Ok(seconds),
    }
}

pub async fn token(connection: &Connection, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let client = Client::new(connection)?;
    match command {
        TokenCommand::Create {
            name,
            role,
            expires,
        } => {
            let body = CreateToken {
                name,
                role: Some(role.into()),
                expires_in_seconds: expires,
            };
            let issued: IssuedTokenView = client.post("/tokens", &body).await??;
            print_secret(&issued, "created")
        }
        TokenCommand::List { json } => {
            let tokens: Vec<TokenView> = client.get("/tokens").await??;
            if json {
                print_json(&tokens)?;
            } else {
                print_table(&tokens);
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { name } => {
            let revoked: TokenView = client.delete(&format!("/tokens/{name}")).await??;
            println!(
                "revoked token `{}` ({}): it no longer works",
                revoked.name, revoked.role
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Rotate { name } => {
            let issued: IssuedTokenView = client
                .post(&format!("/tokens/{name}/rotate"), &())
                .await??;
            print_secret(&issued, "rotated")
        }
    }
}

/// The secret alone on stdout (so `$(fleet token create NAME)` captures it); how to use it on
/// stderr.
fn print_secret(issued: &IssuedTokenView, done: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let token = &issued.token;
    let expiry = token.expires_at.as_deref().map_or_else(
        || "does not expire".to_string(),
        |at| format!("expires {at}"),
    );
    eprintln!("{done} {} token `{}` ({expiry})", token.role, token.name);
    eprintln!("its secret follows; it is shown only now (the controller keeps only its hash):");
    println!("{}", issued.secret);
    std::io::stdout().flush().context("writing the secret")?;
    eprintln!(
        "use it with FLEET_TOKEN=SECRET (or --token SECRET); everything done with it is recorded as `{}`",
        token.name
    );
    Ok(ExitCode::SUCCESS)
}

fn print_table(tokens: &[TokenView]) {
    let mut table = new_table(&["NAME", "ROLE", "CREATED", "LAST USED", "EXPIRES", "REVOKED"]);
    for token in tokens {
        table.add_row(vec![
            Cell::new(&token.name),
            Cell::new(token.role),
            Cell::new(&token.created_at),
            Cell::new(or_dash(token.last_used_at.as_ref())),
            Cell::new(or_dash(token.expires_at.as_ref())),
            Cell::new(or_dash(token.revoked_at.as_ref())),
        ]);
    }
    println!("{}", table.trim_fmt());
    println!(
        "{} token{}",
        tokens.len(),
        if tokens.len() == 1 { "" } else { "s" }
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn lifetimes_read_as_people_write_them() {
        assert_eq!(super::parse_lifetime("30d"), Ok(30 * 24 * 3600));
        assert_eq!(super::parse_lifetime("90min"), Ok(5400));
        assert!(super::parse_lifetime("0s").is_err());
        assert!(super::parse_lifetime("soon").is_err());
    }
}
