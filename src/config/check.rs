//! Checks across declarations and files: duplicates, references, addresses, clone chains, and
//! whether each machine's desired state is reachable. Builds the [`Fleet`] as it goes.
//!
//! Each check is a short function with one concern; all report and go on, so every error in the
//! fleet is found in one run.

use super::diagnostics::{Problem, Problems};
use super::model::{
    ControllerSettings, DeploySettings, DesiredState, Fleet, Image, MachineSpec, NetworkTemplate,
    Policy, Profile, StorageTemplate, Subnet,
};
use super::read::{with_suggestion, Spanned};
use super::sections::{
    ControllerDecl, Declarations, InterfaceDecl, MachineDecl, Named, NetworkDecl, PolicyDecl,
    ProfileDecl, Reference, SubnetDecl,
};
use super::syntax::Span;
use crate::model::{MacAddr, MachineName};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The named sections after duplicate removal, as the machine checks look them up.
struct Catalog {
    subnets: BTreeMap<String, SubnetDecl>,
    images: BTreeMap<String, Named<Image>>,
    storage_templates: BTreeMap<String, Named<StorageTemplate>>,
    network_templates: BTreeMap<String, NetworkDecl>,
    profiles: BTreeMap<String, ProfileDecl>,
    default_image: Option<String>,
}

pub fn build_fleet(
    declarations: Declarations,
    sources: Vec<PathBuf>,
    digest: String,
    problems: &mut Problems,
) -> Fleet {
    let controller = single_controller(declarations.controllers, problems);
    let policy = single_policy(declarations.policies, problems);
    let mut catalog = Catalog {
        subnets: unique(
            declarations.subnets,
            |subnet| &subnet.name,
            "subnet",
            problems,
        ),
        images: unique(declarations.images, |image| &image.name, "image", problems),
        storage_templates: unique(
            declarations.storage_templates,
            |template| &template.name,
            "storage template",
            problems,
        ),
        network_templates: unique(
            declarations.network_templates,
            |template| &template.name,
            "network template",
            problems,
        ),
        profiles: unique(
            declarations.profiles,
            |profile| &profile.name,
            "profile",
            problems,
        ),
        default_image: policy.as_ref().and_then(|policy| {
            policy
                .default_image
                .as_ref()
                .map(|image| image.value.clone())
        }),
    };
    check_subnet_overlaps(&catalog.subnets, problems);
    check_controller_references(controller.as_ref(), &catalog, problems);
    check_policy_references(policy.as_ref(), &catalog, problems);
    check_network_references(&catalog, problems);
    check_profile_references(&catalog, problems);
    check_profile_extends(&catalog.profiles, problems);
    flatten_profiles(&mut catalog.profiles);
    let machines = unique_machines(declarations.machines, problems);
    let names = check_machines(&machines, &catalog, problems);
    if let Some(policy) = &policy {
        check_protected(policy, &machines, &names, problems);
        check_ignored_macs(policy, &machines, problems);
    }
    drop(names);
    let nothing = Arc::new(DeploySettings::default());
    let mut machines: Vec<MachineSpec> = machines
        .into_iter()
        .map(|machine| resolve_machine(machine, &catalog, &nothing))
        .collect();
    machines.sort_by(|left, right| left.name.cmp(&right.name));
    Fleet {
        controller: controller.map(settings_with_image).unwrap_or_default(),
        subnets: catalog
            .subnets
            .into_values()
            .map(|decl| decl.subnet)
            .collect(),
        images: catalog
            .images
            .into_iter()
            .map(|(name, image)| (name, image.value))
            .collect(),
        storage_templates: catalog
            .storage_templates
            .into_iter()
            .map(|(name, template)| (name, template.value))
            .collect(),
        network_templates: catalog
            .network_templates
            .into_iter()
            .map(|(name, decl)| (name, decl.template))
            .collect::<BTreeMap<String, NetworkTemplate>>(),
        profiles: catalog
            .profiles
            .into_iter()
            .map(|(name, decl)| (name, decl.profile))
            .collect::<BTreeMap<String, Profile>>(),
        machines,
        policy: policy.map(policy_with_image).unwrap_or_default(),
        scripts: unique(
            declarations.scripts,
            |script| &script.name,
            "script",
            problems,
        )
        .into_iter()
        .map(|(name, script)| (name, script.value))
        .collect(),
        sources,
        digest,
    }
}

fn settings_with_image(decl: ControllerDecl) -> ControllerSettings {
    ControllerSettings {
        ephemeral_image: decl.ephemeral_image.map(|image| image.value),
        ..decl.settings
    }
}

fn policy_with_image(decl: PolicyDecl) -> Policy {
    Policy {
        default_image: decl.default_image.map(|image| image.value),
        ..decl.policy
    }
}

/// The Fx hash (as in rustc): several times faster than SipHash on short keys. Flooding is no
/// concern here: the keys come from the operator's own files.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(value as u64);
    }

    fn write_u32(&mut self, value: u32) {
        self.add(value as u64);
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    /// The multiply leaves its entropy in the high bits, and hashbrown picks buckets by the low
    /// ones: rotate them down (as rustc-hash 2 does), or keys differing only in high input bits
    /// (IPs of one subnet) all collide.
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

fn fast_map<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, Default::default())
}

/// Machine name → position in the list of (unique) machines, built once for every check.
type NameIndex<'m> = FastMap<&'m str, usize>;

fn name_index(machines: &[MachineDecl]) -> NameIndex<'_> {
    let mut index = fast_map(machines.len());
    for (at, machine) in machines.iter().enumerate() {
        index.insert(machine.name.value.as_str(), at);
    }
    index
}

// ---- one of a kind ----

fn single_controller(
    mut declared: Vec<ControllerDecl>,
    problems: &mut Problems,
) -> Option<ControllerDecl> {
    report_extra_definitions(
        declared.iter().map(|decl| decl.span).collect(),
        "[controller]",
        problems,
    );
    (!declared.is_empty()).then(|| declared.swap_remove(0))
}

fn single_policy(mut declared: Vec<PolicyDecl>, problems: &mut Problems) -> Option<PolicyDecl> {
    report_extra_definitions(
        declared.iter().map(|decl| decl.span).collect(),
        "[policy]",
        problems,
    );
    (!declared.is_empty()).then(|| declared.swap_remove(0))
}

fn report_extra_definitions(spans: Vec<Span>, section: &str, problems: &mut Problems) {
    for span in spans.iter().skip(1) {
        let problem = Problem::new(*span, format!("{section} is defined in more than one file"));
        problems.push(problem.related(spans[0], "first defined"));
    }
}

/// Keeps the first of each name; later ones are errors pointing at the first.
fn unique<T>(
    items: Vec<T>,
    name_of: impl Fn(&T) -> &Spanned<String>,
    kind: &str,
    problems: &mut Problems,
) -> BTreeMap<String, T> {
    let mut by_name: BTreeMap<String, T> = BTreeMap::new();
    for item in items {
        let name = name_of(&item);
        if let Some(first) = by_name.get(&name.value) {
            let problem = Problem::new(
                name.span,
                format!("{kind} `{}` is declared twice", name.value),
            );
            problems.push(problem.related(name_of(first).span, "first declared"));
            continue;
        }
        by_name.insert(name.value.clone(), item);
    }
    by_name
}

fn unique_machines(machines: Vec<MachineDecl>, problems: &mut Problems) -> Vec<MachineDecl> {
    let mut first: FastMap<&str, Span> = fast_map(machines.len());
    let mut duplicate = vec![false; machines.len()];
    for (at, machine) in machines.iter().enumerate() {
        let name = &machine.name;
        match first.get(name.value.as_str()) {
            Some(earlier) => {
                let problem = Problem::new(
                    name.span,
                    format!("machine `{}` is declared twice", name.value),
                );
                problems.push(problem.related(*earlier, "first declared"));
                duplicate[at] = true;
            }
            None => {
                first.insert(name.value.as_str(), name.span);
            }
        }
    }
    drop(first);
    machines
        .into_iter()
        .zip(duplicate)
        .filter(|(_, duplicate)| !duplicate)
        .map(|(machine, _)| machine)
        .collect()
}

// ---- references ----

/// Looks a reference up; an unknown name is an error with a did-you-mean.
fn lookup<'m, V>(
    reference: &Reference,
    map: &'m BTreeMap<String, V>,
    kind: &str,
    problems: &mut Problems,
) -> Option<&'m V> {
    if let Some(found) = map.get(&reference.value) {
        return Some(found);
    }
    let problem = Problem::new(
        reference.span,
        format!("no {kind} is named `{}`", reference.value),
    );
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    let problem = with_suggestion(problem, &reference.value, &names);
    problems.push(if names.is_empty() {
        problem.help(format!("no {kind} is declared at all"))
    } else {
        problem
    });
    None
}

fn check_controller_references(
    controller: Option<&ControllerDecl>,
    catalog: &Catalog,
    problems: &mut Problems,
) {
    let Some(reference) = controller.and_then(|controller| controller.ephemeral_image.as_ref())
    else {
        return;
    };
    if let Some(image) = lookup(reference, &catalog.images, "image", problems) {
        if !image.value.is_bootable() {
            let message = format!(
                "image `{}` has no kernel and initrd, so it cannot boot the ephemeral environment",
                reference.value
            );
            problems.error(reference.span, message);
        }
    }
}

fn check_policy_references(
    policy: Option<&PolicyDecl>,
    catalog: &Catalog,
    problems: &mut Problems,
) {
    if let Some(reference) = policy.and_then(|policy| policy.default_image.as_ref()) {
        if let Some(image) = lookup(reference, &catalog.images, "image", problems) {
            check_deployable(reference, &image.value, problems);
        }
    }
}

fn check_deployable(reference: &Reference, image: &Image, problems: &mut Problems) -> bool {
    if image.is_deployable() {
        return true;
    }
    let problem = Problem::new(
        reference.span,
        format!(
            "image `{}` has no `root` image, so it cannot be deployed",
            reference.value
        ),
    );
    problems.push(problem);
    false
}

fn check_network_references(catalog: &Catalog, problems: &mut Problems) {
    for template in catalog.network_templates.values() {
        for reference in &template.subnet_references {
            lookup(reference, &catalog.subnets, "subnet", problems);
        }
    }
}

fn check_profile_references(catalog: &Catalog, problems: &mut Problems) {
    for profile in catalog.profiles.values() {
        if let Some(storage) = &profile.storage {
            lookup(
                storage,
                &catalog.storage_templates,
                "storage template",
                problems,
            );
        }
        if let Some(network) = &profile.network {
            lookup(
                network,
                &catalog.network_templates,
                "network template",
                problems,
            );
        }
        if let Some(image) = &profile.image {
            lookup(image, &catalog.images, "image", problems);
        }
    }
}

// ---- profiles that extend others ----

/// `extends` names a declared profile, and no chain of them comes back on itself. A cycle is
/// reported once, at the `extends` of its first member by name, naming every profile on it.
fn check_profile_extends(profiles: &BTreeMap<String, ProfileDecl>, problems: &mut Problems) {
    for profile in profiles.values() {
        if let Some(parent) = &profile.extends {
            lookup(parent, profiles, "profile", problems);
        }
    }
    let mut reported: Vec<&str> = Vec::new();
    for name in profiles.keys() {
        let chain = extends_chain(name, profiles);
        let Some(last) = chain.last() else { continue };
        let Some(parent) = last.extends.as_ref() else {
            continue;
        };
        let Some(start) = chain.iter().position(|p| p.name.value == parent.value) else {
            continue; // Ends at an unknown profile, reported above.
        };
        let cycle = &chain[start..];
        let first = cycle.iter().min_by(|a, b| a.name.value.cmp(&b.name.value));
        let Some(first) = first.filter(|first| !reported.contains(&first.name.value.as_str()))
        else {
            continue;
        };
        reported.push(&first.name.value);
        report_extends_cycle(cycle, first, problems);
    }
}

/// The profiles from `name` along `extends`, nearest first, each once: it stops before an
/// unknown profile or one already on it.
fn extends_chain<'p>(
    name: &str,
    profiles: &'p BTreeMap<String, ProfileDecl>,
) -> Vec<&'p ProfileDecl> {
    let mut chain: Vec<&ProfileDecl> = Vec::new();
    let mut next = profiles.get(name);
    while let Some(profile) = next {
        if chain
            .iter()
            .any(|seen| seen.name.value == profile.name.value)
        {
            break;
        }
        chain.push(profile);
        next = (profile.extends.as_ref()).and_then(|parent| profiles.get(&parent.value));
    }
    chain
}

fn report_extends_cycle(cycle: &[&ProfileDecl], first: &ProfileDecl, problems: &mut Problems) {
    let at = cycle
        .iter()
        .position(|profile| profile.name.value == first.name.value)
        .unwrap_or(0);
    let mut names: Vec<&str> = cycle[at..]
        .iter()
        .chain(&cycle[..at])
        .map(|profile| profile.name.value.as_str())
        .collect();
    names.push(names[0]);
    let message = format!("profile cycle: {}", names.join(" → "));
    if let Some(extends) = &first.extends {
        problems.push(
            Problem::new(extends.span, message)
                .help("a profile must not (indirectly) extend itself"),
        );
    }
}

/// Each profile takes what it leaves out from the profiles it extends (see [`Profile::over`]),
/// so a machine needs to look at its own profile only.
fn flatten_profiles(profiles: &mut BTreeMap<String, ProfileDecl>) {
    let flattened: Vec<(String, Profile)> = profiles
        .keys()
        .map(|name| {
            let chain = extends_chain(name, profiles);
            let mut layers = chain.iter().rev().map(|decl| &decl.profile);
            let farthest = layers.next().cloned();
            let profile = layers.fold(farthest, |parent, nearer| {
                parent.map(|parent| nearer.over(&parent))
            });
            (name.clone(), profile)
        })
        .filter_map(|(name, profile)| Some((name, profile?)))
        .collect();
    for (name, profile) in flattened {
        if let Some(decl) = profiles.get_mut(&name) {
            decl.profile = profile;
        }
    }
}

// ---- subnets ----

fn check_subnet_overlaps(subnets: &BTreeMap<String, SubnetDecl>, problems: &mut Problems) {
    let list: Vec<&SubnetDecl> = subnets.values().collect();
    for (index, subnet) in list.iter().enumerate() {
        for other in &list[..index] {
            let (a, b) = (subnet.subnet.cidr, other.subnet.cidr);
            if a.contains(&b.network()) || b.contains(&a.network()) {
                let message = format!(
                    "subnet `{}` ({a}) overlaps subnet `{}` ({b})",
                    subnet.name.value, other.name.value
                );
                problems.push(
                    Problem::new(subnet.cidr_span, message)
                        .related(other.cidr_span, format!("subnet `{}`", other.name.value)),
                );
            }
        }
    }
}

// ---- machines ----

fn check_machines<'m>(
    machines: &'m [MachineDecl],
    catalog: &Catalog,
    problems: &mut Problems,
) -> NameIndex<'m> {
    let mut identities = Identities::with_capacity(machines.len());
    for machine in machines {
        check_machine_references(machine, catalog, problems);
        check_identity(machine, problems);
        check_desired_state(machine, catalog, problems);
        check_clone_basics(machine, problems);
        identities.check(machine, problems);
        for interface in &machine.interfaces {
            check_static_address(interface, catalog, problems);
        }
        check_interfaces_in_template(machine, catalog, problems);
    }
    let names = name_index(machines);
    check_clone_sources(machines, &names, problems);
    check_clone_cycles(machines, &names, problems);
    names
}

fn check_machine_references(machine: &MachineDecl, catalog: &Catalog, problems: &mut Problems) {
    if let Some(profile) = &machine.profile {
        lookup(profile, &catalog.profiles, "profile", problems);
    }
    if let Some(storage) = &machine.storage {
        lookup(
            storage,
            &catalog.storage_templates,
            "storage template",
            problems,
        );
    }
    if let Some(network) = &machine.network {
        lookup(
            network,
            &catalog.network_templates,
            "network template",
            problems,
        );
    }
    if let Some(image) = &machine.image {
        lookup(image, &catalog.images, "image", problems);
    }
}

/// A machine is recognised by a MAC, or by its BMC address until it first boots.
fn check_identity(machine: &MachineDecl, problems: &mut Problems) {
    let has_bmc = machine
        .power
        .as_ref()
        .is_some_and(|power| power.bmc_address().is_some());
    if machine.macs.is_empty() && !has_bmc {
        let problem = Problem::new(
            machine.name.span,
            format!(
                "machine `{}` has neither a MAC nor a BMC to be recognised by",
                machine.name.value
            ),
        );
        problems.push(
            problem.help(
                "add macs = [\"52:54:00:...\"], or an ipmi or redfish power with its address",
            ),
        );
    }
    if let Some(pxe) = &machine.pxe_mac {
        if !machine.macs.iter().any(|mac| mac.value == pxe.value) {
            problems.push(Problem::new(
                pxe.span,
                format!("pxe_mac {} is not one of this machine's `macs`", pxe.value),
            ));
        }
    }
}

/// MACs, BMC addresses and static IPs each belong to one machine.
struct Identities<'m> {
    macs: FastMap<MacAddr, (&'m MachineName, Span)>,
    bmcs: FastMap<&'m str, (&'m MachineName, Span)>,
    addresses: FastMap<IpAddr, (&'m MachineName, Span)>,
}

impl<'m> Identities<'m> {
    /// Sized for `machines` machines with a MAC or two, a BMC and an address each: rehashing
    /// the growing maps was a few percent of checking 100,000 machines.
    fn with_capacity(machines: usize) -> Self {
        Identities {
            macs: fast_map(machines * 2),
            bmcs: fast_map(machines),
            addresses: fast_map(machines),
        }
    }

    fn check(&mut self, machine: &'m MachineDecl, problems: &mut Problems) {
        let name = &machine.name.value;
        for mac in &machine.macs {
            claim(
                &mut self.macs,
                mac.value,
                name,
                mac.span,
                || format!("MAC {}", mac.value),
                problems,
            );
        }
        if let (Some(address), Some(span)) = (
            machine.power.as_ref().and_then(|power| power.bmc_address()),
            machine.power_span,
        ) {
            claim(
                &mut self.bmcs,
                address,
                name,
                span,
                || format!("BMC address {address}"),
                problems,
            );
        }
        for interface in &machine.interfaces {
            if let (Some(ip), Some(span)) = (interface.interface.ip, interface.ip_span) {
                claim(
                    &mut self.addresses,
                    ip,
                    name,
                    span,
                    || format!("address {ip}"),
                    problems,
                );
            }
        }
    }
}

fn claim<'m, K: std::hash::Hash + Eq>(
    owners: &mut FastMap<K, (&'m MachineName, Span)>,
    key: K,
    machine: &'m MachineName,
    span: Span,
    what: impl Fn() -> String,
    problems: &mut Problems,
) {
    match owners.get(&key) {
        Some((owner, first)) if *owner == machine => {
            problems.push(
                Problem::new(span, format!("{} is listed twice for this machine", what()))
                    .related(*first, "first listed"),
            );
        }
        Some((owner, first)) => {
            let problem = Problem::new(
                span,
                format!("{} is already used by machine `{owner}`", what()),
            );
            problems.push(problem.related(*first, format!("used by machine `{owner}`")));
        }
        None => {
            owners.insert(key, (machine, span));
        }
    }
}

/// A static address must be in its subnet, and not where the controller hands out or keeps
/// addresses (the dynamic range, reserved ranges, the gateway, network and broadcast).
fn check_static_address(interface: &InterfaceDecl, catalog: &Catalog, problems: &mut Problems) {
    let Some(subnet) = catalog.subnets.get(&interface.interface.subnet) else {
        let reference = Spanned::new(interface.interface.subnet.clone(), interface.subnet_span);
        lookup(&reference, &catalog.subnets, "subnet", problems);
        return;
    };
    let (Some(ip), Some(span)) = (interface.interface.ip, interface.ip_span) else {
        return;
    };
    if let Some(problem) = address_problem(ip, span, subnet) {
        problems.push(problem);
    }
}

fn address_problem(ip: IpAddr, span: Span, decl: &SubnetDecl) -> Option<Problem> {
    let subnet: &Subnet = &decl.subnet;
    let name = &decl.name.value;
    if !subnet.cidr.contains(&ip) {
        let problem = Problem::new(
            span,
            format!("address {ip} is outside subnet `{name}` ({})", subnet.cidr),
        );
        return Some(problem.related(decl.cidr_span, format!("subnet `{name}`")));
    }
    if let (Some(range), Some(range_span)) = (subnet.dynamic_range, decl.dynamic_range_span) {
        if range.contains(ip) {
            let problem = Problem::new(
                span,
                format!(
                    "address {ip} is inside the dynamic range of subnet `{name}` ({} - {})",
                    range.start, range.end
                ),
            );
            return Some(problem.related(range_span, "the dynamic range"));
        }
    }
    for (reserved, reserved_span) in subnet.reserved.iter().zip(&decl.reserved_spans) {
        if reserved.range.contains(ip) {
            let problem = Problem::new(
                span,
                format!("address {ip} is inside a reserved range of subnet `{name}`"),
            );
            return Some(problem.related(*reserved_span, "the reserved range"));
        }
    }
    if subnet.gateway == Some(ip) {
        return Some(Problem::new(
            span,
            format!("address {ip} is the gateway of subnet `{name}`"),
        ));
    }
    let is_ipv4_edge = matches!(subnet.cidr, ipnet::IpNet::V4(net) if net.prefix_len() < 31 && (ip == IpAddr::V4(net.network()) || ip == IpAddr::V4(net.broadcast())));
    is_ipv4_edge.then(|| {
        Problem::new(
            span,
            format!("address {ip} is the network or broadcast address of subnet `{name}`"),
        )
    })
}

/// Static addresses name interfaces; with a network template they must be its interfaces.
fn check_interfaces_in_template(machine: &MachineDecl, catalog: &Catalog, problems: &mut Problems) {
    let Some(template_name) = network_template_name(machine, catalog) else {
        return;
    };
    let Some(template) = catalog.network_templates.get(template_name) else {
        return;
    };
    let interfaces = &template.template.interfaces;
    for interface in &machine.interfaces {
        if !interfaces
            .iter()
            .any(|declared| declared.name == interface.interface.name)
        {
            let names: Vec<&str> = interfaces
                .iter()
                .map(|declared| declared.name.as_str())
                .collect();
            let message = format!(
                "network template `{template_name}` has no interface `{}`",
                interface.interface.name
            );
            problems.push(with_suggestion(
                Problem::new(interface.span, message),
                &interface.interface.name,
                &names,
            ));
        }
    }
}

fn profile_of<'c>(machine: &MachineDecl, catalog: &'c Catalog) -> Option<&'c ProfileDecl> {
    machine
        .profile
        .as_ref()
        .and_then(|profile| catalog.profiles.get(&profile.value))
}

fn network_template_name<'a>(machine: &'a MachineDecl, catalog: &'a Catalog) -> Option<&'a str> {
    match &machine.network {
        Some(network) => Some(&network.value),
        None => profile_of(machine, catalog)?.profile.network.as_deref(),
    }
}

/// The image a machine deploys: its own, its profile's, or the policy default.
fn image_name<'a>(machine: &'a MachineDecl, catalog: &'a Catalog) -> Option<&'a str> {
    let from_profile =
        || profile_of(machine, catalog).and_then(|profile| profile.profile.image.as_deref());
    machine
        .image
        .as_ref()
        .map(|image| image.value.as_str())
        .or_else(from_profile)
        .or(catalog.default_image.as_deref())
}

// ---- desired state ----

/// The state a machine asks for when `state` is not written: deployed if added live, new if it
/// must not be commissioned, ready otherwise (MAAS commissions machines added by hand).
fn default_state(machine: &MachineDecl) -> DesiredState {
    if flag(&machine.live, false) {
        DesiredState::Deployed
    } else if !flag(&machine.commission, true) {
        DesiredState::New
    } else {
        DesiredState::Ready
    }
}

fn flag(value: &Option<Spanned<bool>>, default: bool) -> bool {
    value.as_ref().map_or(default, |flag| flag.value)
}

fn check_desired_state(machine: &MachineDecl, catalog: &Catalog, problems: &mut Problems) {
    check_live(machine, problems);
    check_commission_needed(machine, problems);
    check_locked(machine, problems);
    check_deploy_image(machine, catalog, problems);
}

fn state_of(machine: &MachineDecl) -> DesiredState {
    machine
        .state
        .as_ref()
        .map_or_else(|| default_state(machine), |state| state.value)
}

/// A machine added live keeps running its workload: it may be deployed, broken or in rescue,
/// but a state that releases it (new, ready, allocated, retired) undoes "added live".
fn check_live(machine: &MachineDecl, problems: &mut Problems) {
    let (Some(live), Some(state)) = (&machine.live, &machine.state) else {
        return;
    };
    if live.value
        && !matches!(
            state.value,
            DesiredState::Deployed | DesiredState::Broken | DesiredState::RescueMode
        )
    {
        let problem = Problem::new(
            state.span,
            format!(
                "a machine added live (`deployed = true`) cannot ask for state `{}`",
                state.value.as_str()
            ),
        );
        problems.push(
            problem.related(live.span, "added live here").help(
                "a live machine is created deployed; ask for deployed, broken or rescue_mode",
            ),
        );
    }
}

/// Ready, allocated and deployed need passed commissioning, which `commission = false` forbids.
/// Decision: an error even if the controller already commissioned the machine once, because the
/// file alone must say how the machine gets where it is asked to be.
fn check_commission_needed(machine: &MachineDecl, problems: &mut Problems) {
    let (Some(commission), Some(state)) = (&machine.commission, &machine.state) else {
        return;
    };
    if !commission.value && !flag(&machine.live, false) && state.value.needs_commissioning() {
        let problem = Problem::new(
            state.span,
            format!(
                "state `{}` needs commissioning, which `commission = false` turns off",
                state.value.as_str()
            ),
        );
        problems.push(
            problem
                .related(commission.span, "commissioning turned off")
                .help("remove `commission = false`, or ask for state \"new\""),
        );
    }
}

/// Only a deployed (or deploying) machine can be locked.
fn check_locked(machine: &MachineDecl, problems: &mut Problems) {
    let Some(locked) = machine.locked.as_ref().filter(|locked| locked.value) else {
        return;
    };
    let state = state_of(machine);
    if state != DesiredState::Deployed {
        let problem = Problem::new(
            locked.span,
            format!(
                "only a deployed machine can be locked, and this one asks for `{}`",
                state.as_str()
            ),
        );
        problems.push(problem.help("set state = \"deployed\", or remove `locked`"));
    }
}

/// Deploying writes an image: there must be one, it must have a root image, and its arch must
/// match the machine's. A machine added live is already installed and needs none.
fn check_deploy_image(machine: &MachineDecl, catalog: &Catalog, problems: &mut Problems) {
    if state_of(machine) != DesiredState::Deployed || flag(&machine.live, false) {
        return;
    }
    let span = machine
        .state
        .as_ref()
        .map_or(machine.name.span, |state| state.span);
    let Some(name) = image_name(machine, catalog) else {
        let problem = Problem::new(
            span,
            format!(
                "machine `{}` asks to be deployed but has no image",
                machine.name.value
            ),
        );
        problems.push(
            problem
                .help("set `image` on the machine or its profile, or `default_image` in [policy]"),
        );
        return;
    };
    let Some(image) = catalog.images.get(name) else {
        return; // An unknown image is reported where it is named.
    };
    check_deployable(
        &Spanned::new(
            name.to_string(),
            machine.image.as_ref().map_or(span, |image| image.span),
        ),
        &image.value,
        problems,
    );
    let arch = machine_arch(machine, catalog);
    if image.value.arch != arch {
        let message = format!(
            "image `{name}` is for {}, and machine `{}` is {}",
            image.value.arch.as_str(),
            machine.name.value,
            arch.as_str()
        );
        problems.error(
            machine.image.as_ref().map_or(span, |image| image.span),
            message,
        );
    }
    let span = machine.image.as_ref().map_or(span, |image| image.span);
    check_image_fits_template(machine, catalog, &image.value, span, problems);
}

/// A whole-disk image brings its own partitions: the machine's storage template must be
/// `blank` (its `root_device` picks the disk). A root tarball needs partitions: not `blank`.
fn check_image_fits_template(
    machine: &MachineDecl,
    catalog: &Catalog,
    image: &super::model::Image,
    span: Span,
    problems: &mut Problems,
) {
    let Some(root) = &image.root else {
        return;
    };
    let name = match &machine.storage {
        Some(storage) => Some(storage.value.as_str()),
        None => profile_of(machine, catalog).and_then(|profile| profile.profile.storage.as_deref()),
    };
    let Some(template) = name.and_then(|name| catalog.storage_templates.get(name)) else {
        return;
    };
    let blank = matches!(template.value.layout, super::model::StorageLayout::Blank);
    let (format, whole_disk) = (root.format.as_str(), root.format.is_whole_disk());
    let (message, help) = match (whole_disk, blank) {
        (true, false) => (
            format!(
                "image `{}` is a whole-disk image ({format}), and machine `{}`'s storage template `{}` is not blank",
                image.name, machine.name.value, template.value.name
            ),
            "a whole-disk image brings its own partitions: give the machine a template with layout = \"blank\" (its root_device picks the disk), or use a root tarball (tgz, tar-xz, tar-zst)",
        ),
        (false, true) => (
            format!(
                "image `{}` is a root tarball ({format}), and machine `{}`'s storage template `{}` is blank",
                image.name, machine.name.value, template.value.name
            ),
            "a tarball is laid onto partitions: give the machine a flat, lvm, bcache or custom template, or use a whole-disk image",
        ),
        _ => return,
    };
    problems.push(Problem::new(span, message).help(help));
}

fn machine_arch(machine: &MachineDecl, catalog: &Catalog) -> super::model::Arch {
    machine
        .arch
        .or_else(|| profile_of(machine, catalog).and_then(|profile| profile.profile.arch))
        .unwrap_or_default()
}

// ---- cloning ----

/// A clone destination must be ready when cloned; a live machine never is.
fn check_clone_basics(machine: &MachineDecl, problems: &mut Problems) {
    let Some(clone) = &machine.clone_from else {
        return;
    };
    if clone.spec.source == machine.name.value {
        problems.error(
            clone.source_span,
            format!(
                "machine `{}` cannot be cloned from itself",
                machine.name.value
            ),
        );
    }
    if flag(&machine.live, false) {
        problems.error(
            clone.span,
            "a machine added live (`deployed = true`) cannot be a clone destination",
        );
    } else if !state_of(machine).needs_commissioning() {
        let message = format!(
            "a clone destination must reach ready, and this machine asks for `{}`",
            state_of(machine).as_str()
        );
        problems.error(clone.span, message);
    }
}

fn check_clone_sources(machines: &[MachineDecl], names: &NameIndex<'_>, problems: &mut Problems) {
    for clone in machines
        .iter()
        .filter_map(|machine| machine.clone_from.as_ref())
    {
        if !names.contains_key(clone.spec.source.as_str()) {
            let problem = Problem::new(
                clone.source_span,
                format!("no machine is named `{}`", clone.spec.source),
            );
            let candidates = machines.iter().map(|machine| machine.name.value.as_str());
            let problem = match super::read::closest(clone.spec.source.as_str(), candidates) {
                Some(best) => problem.help(format!("did you mean `{best}`?")),
                None => problem,
            };
            problems.push(problem);
        }
    }
}

/// Each machine clones from at most one source, so the clone graph is a set of chains; a chain
/// that comes back on itself is a cycle, reported once, naming every machine on it.
fn check_clone_cycles(machines: &[MachineDecl], index: &NameIndex<'_>, problems: &mut Problems) {
    let next = |at: usize| {
        let clone = machines[at].clone_from.as_ref()?;
        index
            .get(clone.spec.source.as_str())
            .copied()
            .filter(|source| *source != at)
    };
    // 0: not seen, 1: on the current chain, 2: done.
    let mut state = vec![0u8; machines.len()];
    for start in 0..machines.len() {
        let mut chain = Vec::new();
        let mut current = Some(start);
        while let Some(at) = current.filter(|at| state[*at] != 2) {
            if state[at] == 1 {
                report_cycle(
                    machines,
                    &chain[chain.iter().position(|member| *member == at).unwrap_or(0)..],
                    problems,
                );
                break;
            }
            state[at] = 1;
            chain.push(at);
            current = next(at);
        }
        chain.iter().for_each(|at| state[*at] = 2);
    }
}

fn report_cycle(machines: &[MachineDecl], cycle: &[usize], problems: &mut Problems) {
    let mut names: Vec<&str> = cycle
        .iter()
        .map(|at| machines[*at].name.value.as_str())
        .collect();
    names.push(names[0]);
    // `a` clones from `b` means the configuration flows b → a; the chain is written as followed.
    let message = format!("clone cycle: {}", names.join(" → "));
    if let Some(clone) = machines[cycle[0]].clone_from.as_ref() {
        problems.push(
            Problem::new(clone.source_span, message)
                .help("a clone source must not (indirectly) clone from its destination"),
        );
    }
}

// ---- policy ----

/// A typo in the protection list would silently leave a machine unprotected.
fn check_protected(
    policy: &PolicyDecl,
    machines: &[MachineDecl],
    names: &NameIndex<'_>,
    problems: &mut Problems,
) {
    for protected in &policy.protected_machines {
        if !names.contains_key(protected.value.as_str()) {
            let problem = Problem::new(
                protected.span,
                format!("protected machine `{}` is not declared", protected.value),
            );
            let candidates = machines.iter().map(|machine| machine.name.value.as_str());
            problems.push(
                match super::read::closest(protected.value.as_str(), candidates) {
                    Some(best) => problem.help(format!("did you mean `{best}`?")),
                    None => problem.help("a protection that names no machine protects nothing"),
                },
            );
        }
    }
}

/// A MAC both ignored and declared by a machine is an error, not a choice between the two: the
/// DHCP server would never answer it, so the machine could never netboot (nor get the fixed
/// address of an interface with that `mac`). Reported at the ignored entry, with the machine's
/// own declaration of the MAC as the related position.
fn check_ignored_macs(policy: &PolicyDecl, machines: &[MachineDecl], problems: &mut Problems) {
    if policy.ignore_macs.is_empty() {
        return;
    }
    let mut declared: FastMap<MacAddr, (&MachineName, Span)> = FastMap::default();
    for machine in machines {
        let interface_macs = machine.interfaces.iter().filter_map(|interface| {
            let mac = interface.interface.mac?;
            Some((mac, interface.span))
        });
        let macs = machine.macs.iter().map(|mac| (mac.value, mac.span));
        for (mac, span) in macs.chain(interface_macs) {
            declared.entry(mac).or_insert((&machine.name.value, span));
        }
    }
    for ignored in &policy.ignore_macs {
        if let Some((machine, span)) = declared.get(&ignored.value) {
            let problem = Problem::new(
                ignored.span,
                format!(
                    "MAC {} is ignored by the policy but belongs to machine `{machine}`",
                    ignored.value
                ),
            );
            let help = "DHCP would never answer it, so the machine could never netboot; \
                        remove it from `ignore_macs` or from the machine";
            problems.push(
                problem
                    .related(*span, format!("declared by machine `{machine}`"))
                    .help(help),
            );
        }
    }
}

// ---- the resolved machine ----

/// The machine's deployment settings over its profile's: the profile's own (shared, not copied)
/// when the machine gives none, as most do.
fn machine_deploy(
    own: DeploySettings,
    profile: Option<&Profile>,
    nothing: &Arc<DeploySettings>,
) -> Arc<DeploySettings> {
    match (profile, own.is_empty()) {
        (Some(profile), true) => Arc::clone(&profile.deploy),
        (Some(profile), false) => Arc::new(own.over(&profile.deploy)),
        (None, true) => Arc::clone(nothing),
        (None, false) => Arc::new(own),
    }
}

/// Moves the declaration into the resolved machine (no copies of its strings), filling in what
/// the profile and the policy give.
fn resolve_machine(
    machine: MachineDecl,
    catalog: &Catalog,
    nothing: &Arc<DeploySettings>,
) -> MachineSpec {
    let profile = profile_of(&machine, catalog).map(|decl| &decl.profile);
    let image = image_name(&machine, catalog).map(str::to_string);
    let (arch, state) = (machine_arch(&machine, catalog), state_of(&machine));
    let mut tags: Vec<String> = profile
        .map(|profile| profile.tags.clone())
        .unwrap_or_default();
    tags.extend(machine.tags);
    tags.sort();
    tags.dedup();
    let own = |reference: Option<Reference>| reference.map(|reference| reference.value);
    let pxe_mac = machine
        .pxe_mac
        .map(|mac| mac.value)
        .or(machine.macs.first().map(|mac| mac.value));
    MachineSpec {
        name: machine.name.value,
        macs: machine.macs.into_iter().map(|mac| mac.value).collect(),
        pxe_mac,
        arch,
        power: machine.power.unwrap_or(super::model::PowerSpec::Manual),
        profile: own(machine.profile),
        storage: own(machine.storage)
            .or_else(|| profile.and_then(|profile| profile.storage.clone())),
        network: own(machine.network)
            .or_else(|| profile.and_then(|profile| profile.network.clone())),
        image,
        state,
        locked: flag(&machine.locked, false),
        owner: machine.owner,
        clone_from: machine.clone_from.map(|clone| clone.spec),
        commission: flag(&machine.commission, true),
        live: flag(&machine.live, false),
        tags,
        expect: machine
            .expect
            .or(profile.map(|profile| profile.expect).unwrap_or_default()),
        interfaces: machine
            .interfaces
            .into_iter()
            .map(|interface| interface.interface)
            .collect(),
        comment: machine.comment,
        deploy: machine_deploy(machine.deploy, profile, nothing),
    }
}
