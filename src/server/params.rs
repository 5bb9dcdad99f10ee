//! Query parameters of `GET /api/generate`: parsed once, validated and capped, or refused with a 400 that says why.

use serde::Serialize;

use crate::generate::SamplerKind;
use crate::train::{Objective, TrainConfig};

/// Most digits one request may ask for.
pub const MAX_N: usize = 64;
/// Most sampler steps one request may ask for (DDIM / Euler).
pub const MAX_STEPS: usize = 1000;
pub const MAX_GUIDANCE: f64 = 20.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Png,
    Gif,
    Json,
}

/// A validated generation request.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateParams {
    /// None = any digit (the unconditional "no class" input).
    pub digit: Option<u8>,
    pub n: usize,
    pub guidance: f64,
    pub sampler: SamplerKind,
    /// DDIM / Euler steps; None for DDPM (every timestep).
    pub steps: Option<usize>,
    pub seed: u64,
    pub format: Format,
    /// With format=json: include the reverse-process GIF.
    pub animate: bool,
}

const KNOWN: [&str; 8] = [
    "digit", "n", "guidance", "sampler", "steps", "seed", "format", "animate",
];

/// Parses `pairs` (decoded query pairs) for a model trained with `config`.
pub fn parse(pairs: &[(String, String)], config: &TrainConfig) -> Result<GenerateParams, String> {
    if let Some((key, _)) = pairs.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "unknown parameter `{}` (known: {})",
            truncate(key),
            KNOWN.join(", ")
        ));
    }
    let get = |key: &str| -> Result<Option<&str>, String> {
        let mut values = pairs.iter().filter(|(k, _)| k == key);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(format!("parameter `{key}` given more than once"));
        }
        Ok(first)
    };
    let digit = match get("digit")? {
        None | Some("any") | Some("") => None,
        Some(d) => match d.parse::<u8>() {
            Ok(d) if d <= 9 => Some(d),
            _ => return Err(format!("digit must be 0..9 or `any`, got `{}`", truncate(d))),
        },
    };
    if digit.is_some() && !config.model.class_cond {
        return Err("this model is not class-conditioned: use digit=any".into());
    }
    let n = number(get("n")?, "n", 8usize)?;
    if n == 0 || n > MAX_N {
        return Err(format!("n must be between 1 and {MAX_N}, got {n}"));
    }
    let guidance = number(get("guidance")?, "guidance", 5.0f64)?;
    if !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(format!("guidance must be between 0 and {MAX_GUIDANCE}, got {guidance}"));
    }
    let is_flow = matches!(config.objective, Objective::Flow { .. });
    let sampler = match get("sampler")? {
        None | Some("") => SamplerKind::default_for(&config.objective),
        Some("ddpm") if !is_flow => SamplerKind::Ddpm,
        Some("ddim") if !is_flow => SamplerKind::Ddim,
        Some("euler") if is_flow => SamplerKind::Euler,
        Some(other) => {
            let allowed = if is_flow { "euler" } else { "ddpm, ddim" };
            return Err(format!(
                "sampler `{}` is not available for this model (use {allowed})",
                truncate(other)
            ));
        }
    };
    let steps = match get("steps")? {
        None | Some("") => None,
        Some(v) => {
            let steps: usize = number(Some(v), "steps", 0)?;
            if steps == 0 || steps > MAX_STEPS {
                return Err(format!("steps must be between 1 and {MAX_STEPS}, got {steps}"));
            }
            Some(steps)
        }
    };
    let steps = if sampler == SamplerKind::Ddpm { None } else { steps };
    let seed = number(get("seed")?, "seed", 0u64)?;
    let format = match get("format")? {
        None | Some("") | Some("png") => Format::Png,
        Some("gif") => Format::Gif,
        Some("json") => Format::Json,
        Some(other) => return Err(format!("format must be png, gif or json, got `{}`", truncate(other))),
    };
    let animate = matches!(get("animate")?, Some("1") | Some("true"));
    Ok(GenerateParams {
        digit,
        n,
        guidance,
        sampler,
        steps,
        seed,
        format,
        animate,
    })
}

fn number<T: std::str::FromStr>(value: Option<&str>, key: &str, default: T) -> Result<T, String> {
    match value {
        None | Some("") => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{key} must be a number in range, got `{}`", truncate(v))),
    }
}

/// Echoing user input back is capped so a huge parameter cannot bloat the error.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::ModelKind;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_caps() {
        let cfg = ModelKind::Cfg.spec_config();
        let p = parse(&pairs(&[]), &cfg).expect("defaults");
        assert_eq!(
            (p.digit, p.n, p.sampler, p.format),
            (None, 8, SamplerKind::Ddpm, Format::Png)
        );
        let p = parse(
            &pairs(&[("digit", "7"), ("sampler", "ddim"), ("steps", "20"), ("format", "json")]),
            &cfg,
        )
        .expect("ok");
        assert_eq!((p.digit, p.steps), (Some(7), Some(20)));
        for bad in [
            vec![("digit", "10")],
            vec![("digit", "-1")],
            vec![("n", "0")],
            vec![("n", "100000000000000000000000")],
            vec![("guidance", "NaN")],
            vec![("guidance", "-1")],
            vec![("steps", "0")],
            vec![("sampler", "euler")],
            vec![("format", "bmp")],
            vec![("bogus", "1")],
            vec![("n", "2"), ("n", "3")],
        ] {
            assert!(parse(&pairs(&bad), &cfg).is_err(), "{bad:?} accepted");
        }
        let flow = ModelKind::Flow.spec_config();
        assert_eq!(parse(&pairs(&[]), &flow).expect("flow").sampler, SamplerKind::Euler);
        assert!(parse(&pairs(&[("digit", "3")]), &ModelKind::Ddpm.spec_config()).is_err());
    }
}
