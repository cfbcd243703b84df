//! `[subnets.NAME]`: the networks machines boot on and take static addresses from.
//!
//! Checks within one subnet live here (gateway and ranges inside the CIDR, ranges not
//! overlapping); checks across subnets and machines live in `check`.

use crate::config::diagnostics::{Problem, Problems};
use crate::config::model::{IpRange, ReservedRange, Subnet};
use crate::config::read::{ip_address, Spanned, TableReader};
use crate::config::syntax::{Item, Span};
use ipnet::IpNet;
use std::net::IpAddr;

pub const KEYS: &[&str] = &[
    "cidr",
    "gateway",
    "dns",
    "domain",
    "interface",
    "dynamic_range",
    "reserved",
    "lease_seconds",
    "proxy_dhcp",
];
pub const RANGE_KEYS: &[&str] = &["start", "end"];
pub const RESERVED_KEYS: &[&str] = &["start", "end", "comment"];

#[derive(Debug)]
pub struct SubnetDecl {
    pub name: Spanned<String>,
    pub subnet: Subnet,
    pub cidr_span: Span,
    pub dynamic_range_span: Option<Span>,
    pub reserved_spans: Vec<Span>,
}

pub fn read(
    name: Spanned<String>,
    reader: TableReader<'_, '_>,
    problems: &mut Problems,
) -> Option<SubnetDecl> {
    reader.check_keys(KEYS, problems);
    let cidr = reader
        .required_string("cidr", problems)
        .and_then(|text| cidr(text, problems))?;
    let dynamic = reader
        .item("dynamic_range")
        .and_then(|item| range(&item, "dynamic_range", RANGE_KEYS, &cidr, problems));
    let reserved: Vec<_> = reserved_ranges(&reader, &cidr, problems);
    check_range_overlaps(dynamic.as_ref(), &reserved, problems);
    let subnet = Subnet {
        name: name.value.clone(),
        cidr: cidr.value,
        gateway: address_in(&reader, "gateway", &cidr, problems),
        dns: addresses(&reader, "dns", problems),
        domain: domain(&reader, problems),
        interface: reader.owned_string("interface", problems),
        dynamic_range: dynamic.as_ref().map(|range| range.value.0),
        reserved: reserved.iter().map(|range| range.value.clone()).collect(),
        lease_seconds: reader
            .integer("lease_seconds", 60, u32::MAX as i64, problems)
            .map_or_else(Subnet::default_lease_seconds, |s| s.value as u32),
        proxy_dhcp: reader
            .boolean("proxy_dhcp", problems)
            .is_some_and(|flag| flag.value),
    };
    Some(SubnetDecl {
        name,
        subnet,
        cidr_span: cidr.span,
        dynamic_range_span: dynamic.map(|range| range.span),
        reserved_spans: reserved.iter().map(|range| range.span).collect(),
    })
}

/// A CIDR whose address is the network address: `10.0.0.0/24`, not `10.0.0.5/24`.
fn cidr(text: Spanned<&str>, problems: &mut Problems) -> Option<Spanned<IpNet>> {
    let Ok(network) = text.value.parse::<IpNet>() else {
        let problem = Problem::new(text.span, format!("`{}` is not a CIDR", text.value));
        problems.push(problem.help("write a network and prefix length, such as \"10.0.0.0/24\""));
        return None;
    };
    if network.addr() != network.network() {
        let problem = Problem::new(text.span, format!("`{}` has host bits set", text.value));
        problems.push(problem.help(format!("did you mean `{}`?", network.trunc())));
        return None;
    }
    Some(Spanned::new(network, text.span))
}

fn address_in(
    reader: &TableReader<'_, '_>,
    key: &str,
    cidr: &Spanned<IpNet>,
    problems: &mut Problems,
) -> Option<IpAddr> {
    let address = reader
        .string(key, problems)
        .and_then(|text| ip_address(text, problems))?;
    check_inside(&address, key, cidr, problems).then_some(address.value)
}

fn check_inside(
    address: &Spanned<IpAddr>,
    what: &str,
    cidr: &Spanned<IpNet>,
    problems: &mut Problems,
) -> bool {
    if cidr.value.contains(&address.value) {
        return true;
    }
    problems.error(
        address.span,
        format!(
            "{what} {} is outside the subnet {}",
            address.value, cidr.value
        ),
    );
    false
}

fn addresses(reader: &TableReader<'_, '_>, key: &str, problems: &mut Problems) -> Vec<IpAddr> {
    let list = reader.string_list(key, problems);
    list.into_iter()
        .filter_map(|text| ip_address(text, problems))
        .map(|address| address.value)
        .collect()
}

fn domain(reader: &TableReader<'_, '_>, problems: &mut Problems) -> Option<String> {
    let domain = reader.string("domain", problems)?;
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if domain.value.split('.').all(label_ok) {
        return Some(domain.value.to_ascii_lowercase());
    }
    problems.error(
        domain.span,
        format!("`{}` is not a DNS domain name", domain.value),
    );
    None
}

/// `{ start = "10.0.0.100", end = "10.0.0.199" }`, inside the subnet, start ≤ end.
/// The second element is the comment, for reserved ranges.
fn range(
    item: &Item<'_, '_>,
    key: &str,
    keys: &[&str],
    cidr: &Spanned<IpNet>,
    problems: &mut Problems,
) -> Option<Spanned<(IpRange, Option<String>)>> {
    let context = format!("`{key}`");
    let table = TableReader::from_item(item, &context, problems)?;
    table.check_keys(keys, problems);
    let start: Option<Spanned<IpAddr>> = table
        .required_string("start", problems)
        .and_then(|text| ip_address(text, problems));
    let end: Option<Spanned<IpAddr>> = table
        .required_string("end", problems)
        .and_then(|text| ip_address(text, problems));
    let comment = table.owned_string("comment", problems);
    let (start, end) = (start?, end?);
    let inside = check_inside(&start, "the range start", cidr, problems)
        & check_inside(&end, "the range end", cidr, problems);
    if start.value > end.value {
        problems.error(
            item.span,
            format!(
                "the range starts at {} after its end {}",
                start.value, end.value
            ),
        );
        return None;
    }
    inside.then(|| {
        Spanned::new(
            (
                IpRange {
                    start: start.value,
                    end: end.value,
                },
                comment,
            ),
            item.span,
        )
    })
}

fn reserved_ranges(
    reader: &TableReader<'_, '_>,
    cidr: &Spanned<IpNet>,
    problems: &mut Problems,
) -> Vec<Spanned<ReservedRange>> {
    let Some(items) = reader.array("reserved", problems) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| range(&item, "reserved", RESERVED_KEYS, cidr, problems))
        .map(|spanned| {
            Spanned::new(
                ReservedRange {
                    range: spanned.value.0,
                    comment: spanned.value.1,
                },
                spanned.span,
            )
        })
        .collect()
}

/// The controller must never hand out a reserved address from the dynamic range.
fn check_range_overlaps(
    dynamic: Option<&Spanned<(IpRange, Option<String>)>>,
    reserved: &[Spanned<ReservedRange>],
    problems: &mut Problems,
) {
    for (index, range) in reserved.iter().enumerate() {
        if let Some(dynamic) =
            dynamic.filter(|dynamic| dynamic.value.0.overlaps(&range.value.range))
        {
            let problem =
                Problem::new(range.span, "this reserved range overlaps the dynamic range");
            problems.push(problem.related(dynamic.span, "the dynamic range"));
        }
        for earlier in &reserved[..index] {
            if earlier.value.range.overlaps(&range.value.range) {
                let problem = Problem::new(
                    range.span,
                    "this reserved range overlaps another reserved range",
                );
                problems.push(problem.related(earlier.span, "the other range"));
            }
        }
    }
}
