//! Query parameters of `GET /api/generate`: parsed once, validated and capped, or refused with a 400 that says why.
//!
//! [`GenerateQuery`] is the query as it arrives (every field a string, unknown and repeated names refused), read by
//! axum's `Query` extractor, and is also what the OpenAPI document lists, so the document and the parser cannot
//! disagree; [`validate`] turns it into [`GenerateParams`].

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::{IntoParams, ToSchema};

use crate::generate::{parse_guidance_interval, SampleDefaults, SamplerKind};
use crate::run::TrainConfig;

/// Most digits one request may ask for.
pub const MAX_N: usize = 64;
/// Most sampler steps one request may ask for (every sampler but DDPM).
pub const MAX_STEPS: usize = 1000;
pub const MAX_GUIDANCE: f64 = 20.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Png,
    Gif,
    Json,
}

/// Why a query was refused (the 400 answer's message).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct InvalidQuery(pub String);

/// A validated generation request.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateParams {
    /// None = any digit (the unconditional "no class" input).
    pub digit: Option<u8>,
    pub n: usize,
    pub guidance: f64,
    /// Guide only at normalized times in [lo, hi]; None = at every step.
    pub guidance_interval: Option<(f64, f64)>,
    pub sampler: SamplerKind,
    /// DDIM / Euler steps; None for DDPM (every timestep).
    pub steps: Option<usize>,
    pub seed: u64,
    pub format: Format,
    /// With format=json: include the reverse-process GIF.
    pub animate: bool,
}

/// The query string of `GET /api/generate`, before validation. An empty value means the default.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GenerateQuery {
    /// A digit 0..9, or `any` (default): the unconditional input. Class-conditioned models only.
    #[param(example = "7")]
    pub digit: Option<String>,
    /// How many digits, 1..64 [default: 8].
    #[param(value_type = Option<u32>, minimum = 1, maximum = 64)]
    pub n: Option<String>,
    /// Classifier-free guidance scale, 0..20 [default: the model's, README Sampling].
    #[param(value_type = Option<f64>, minimum = 0, maximum = 20)]
    pub guidance: Option<String>,
    /// Guide only at normalized times LO..HI (`LO,HI`, 0 <= LO <= HI <= 1, 1 = pure noise); the conditional
    /// prediction alone elsewhere; `all` guides at every step [default: the model's, README Sampling].
    #[param(example = "0.2,0.8")]
    pub guidance_interval: Option<String>,
    /// `ddpm`, `ddim`, `dpmpp-2m` or `dpmpp-2m-sde` for diffusion models, `euler`, `heun` or `midpoint` for flow
    /// models [default: the model's, README Sampling].
    #[param(example = "ddim")]
    pub sampler: Option<String>,
    /// Steps of every sampler but DDPM, 1..1000 [default: the model's]; DDPM always takes every timestep.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub steps: Option<String>,
    /// Noise seed: the same seed gives the same digits [default: 0].
    #[param(value_type = Option<u64>)]
    pub seed: Option<String>,
    /// `png` (a grid, default), `gif` (the reverse process) or `json` (base64 PNGs and timings).
    #[param(value_type = Option<Format>)]
    pub format: Option<String>,
    /// With format=json, `1` or `true` adds the reverse-process GIF.
    #[param(value_type = Option<bool>)]
    pub animate: Option<String>,
}

/// Validates what axum's `Query` extractor made of the query string, for a model trained with `config`.
pub fn parse(
    query: Result<Query<GenerateQuery>, QueryRejection>,
    config: &TrainConfig,
) -> Result<GenerateParams, InvalidQuery> {
    let Query(raw) = query.map_err(|rejection| InvalidQuery(truncate_message(&rejection.body_text())))?;
    validate(&raw, config)
}

/// Checks each value of `raw` against its range and the model.
pub fn validate(raw: &GenerateQuery, config: &TrainConfig) -> Result<GenerateParams, InvalidQuery> {
    let digit = match raw.digit.as_deref() {
        None | Some("any") | Some("") => None,
        Some(d) => match d.parse::<u8>() {
            Ok(d) if d <= 9 => Some(d),
            _ => {
                return Err(InvalidQuery(format!(
                    "digit must be 0..9 or `any`, got `{}`",
                    truncate(d)
                )))
            }
        },
    };
    if digit.is_some() && !config.model.class_cond {
        return Err(InvalidQuery(
            "this model is not class-conditioned: use digit=any".into(),
        ));
    }
    let n = number(raw.n.as_deref(), "n", 8usize)?;
    if n == 0 || n > MAX_N {
        return Err(InvalidQuery(format!("n must be between 1 and {MAX_N}, got {n}")));
    }
    let defaults = SampleDefaults::for_objective(&config.objective);
    let guidance = number(raw.guidance.as_deref(), "guidance", defaults.guidance)?;
    if !(0.0..=MAX_GUIDANCE).contains(&guidance) {
        return Err(InvalidQuery(format!(
            "guidance must be between 0 and {MAX_GUIDANCE}, got {guidance}"
        )));
    }
    let guidance_interval = match raw.guidance_interval.as_deref() {
        None | Some("") => defaults.guidance_interval,
        Some(v) => Some(parse_guidance_interval(v).map_err(|e| InvalidQuery(e.to_string()))?),
    };
    let sampler = match raw.sampler.as_deref() {
        None | Some("") => defaults.sampler,
        Some(name) => match SamplerKind::from_name(name) {
            Some(sampler) if sampler.fits(&config.objective) => sampler,
            _ => {
                let allowed: Vec<&str> = SamplerKind::fitting(&config.objective)
                    .iter()
                    .map(|k| k.name())
                    .collect();
                return Err(InvalidQuery(format!(
                    "sampler `{}` is not available for this model (use {})",
                    truncate(name),
                    allowed.join(", ")
                )));
            }
        },
    };
    let steps = match raw.steps.as_deref() {
        None | Some("") => None,
        Some(v) => {
            let steps: usize = number(Some(v), "steps", 0)?;
            if steps == 0 || steps > MAX_STEPS {
                return Err(InvalidQuery(format!(
                    "steps must be between 1 and {MAX_STEPS}, got {steps}"
                )));
            }
            Some(steps)
        }
    };
    let steps = if sampler == SamplerKind::Ddpm { None } else { steps };
    let seed = number(raw.seed.as_deref(), "seed", 0u64)?;
    let format = match raw.format.as_deref() {
        None | Some("") | Some("png") => Format::Png,
        Some("gif") => Format::Gif,
        Some("json") => Format::Json,
        Some(other) => {
            return Err(InvalidQuery(format!(
                "format must be png, gif or json, got `{}`",
                truncate(other)
            )))
        }
    };
    let animate = match raw.animate.as_deref() {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => {
            return Err(InvalidQuery(format!(
                "animate must be 1, true, 0 or false, got `{}`",
                truncate(other)
            )))
        }
    };
    Ok(GenerateParams {
        digit,
        n,
        guidance,
        guidance_interval,
        sampler,
        steps,
        seed,
        format,
        animate,
    })
}

fn number<T: std::str::FromStr>(value: Option<&str>, key: &str, default: T) -> Result<T, InvalidQuery> {
    match value {
        None | Some("") => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| InvalidQuery(format!("{key} must be a number in range, got `{}`", truncate(v)))),
    }
}

/// Echoing user input back is capped so a huge parameter cannot bloat the error.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The query parser's own message (unknown or repeated names) echoes the name: capped too.
fn truncate_message(s: &str) -> String {
    s.chars().take(400).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::ModelKind;

    fn pairs(q: &[(&str, &str)]) -> String {
        form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish()
    }

    /// The query string through the extractor the server uses.
    fn parse(query: &str, config: &TrainConfig) -> Result<GenerateParams, String> {
        let uri: axum::http::Uri = format!("/api/generate?{query}").parse().expect("uri");
        super::parse(Query::try_from_uri(&uri), config).map_err(|e| e.0)
    }

    #[test]
    fn defaults_and_caps() {
        let cfg = ModelKind::Cfg.spec_config();
        let p = parse(&pairs(&[]), &cfg).expect("defaults");
        assert_eq!(
            (p.digit, p.n, p.sampler, p.format),
            (None, 8, SampleDefaults::DIFFUSION.sampler, Format::Png)
        );
        let p = parse(
            &pairs(&[("digit", "7"), ("sampler", "ddim"), ("steps", "20"), ("format", "json")]),
            &cfg,
        )
        .expect("ok");
        assert_eq!((p.digit, p.steps), (Some(7), Some(20)));
        for (value, animate) in [("1", true), ("true", true), ("0", false), ("false", false)] {
            assert_eq!(
                parse(&pairs(&[("animate", value)]), &cfg).expect(value).animate,
                animate
            );
        }
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
            vec![("animate", "yes")],
            vec![("animate", "2")],
            vec![("bogus", "1")],
            vec![("n", "2"), ("n", "3")],
        ] {
            assert!(parse(&pairs(&bad), &cfg).is_err(), "{bad:?} accepted");
        }
        let flow = ModelKind::Flow.spec_config();
        assert_eq!(
            parse(&pairs(&[]), &flow).expect("flow").sampler,
            SampleDefaults::FLOW.sampler
        );
        assert!(parse(&pairs(&[("digit", "3")]), &ModelKind::Ddpm.spec_config()).is_err());
    }

    #[test]
    fn unknown_and_repeated_names_are_refused_by_name() {
        let cfg = ModelKind::Cfg.spec_config();
        let err = parse("bogus=1", &cfg).expect_err("unknown");
        assert!(err.contains("bogus") && err.contains("`digit`"), "{err}");
        let err = parse("n=2&n=3", &cfg).expect_err("repeated");
        assert!(err.contains("duplicate") && err.contains("`n`"), "{err}");
        let long = format!("{}=1", "k".repeat(5000));
        assert!(parse(&long, &cfg).expect_err("long").len() <= 400);
    }

    /// The document states the same ranges the validator enforces.
    #[test]
    fn documented_ranges_match_the_caps() {
        let params = GenerateQuery::into_params(|| None);
        let maximum = |name: &str| {
            let p = params.iter().find(|p| p.name == name).expect("documented");
            serde_json::to_value(p).expect("json")["schema"]["maximum"].as_f64()
        };
        assert_eq!(maximum("n"), Some(MAX_N as f64));
        assert_eq!(maximum("steps"), Some(MAX_STEPS as f64));
        assert_eq!(maximum("guidance"), Some(MAX_GUIDANCE));
    }

    #[test]
    fn every_sampler_by_name_and_guidance_interval() {
        let cfg = ModelKind::Cfg.spec_config();
        let flow = ModelKind::Flow.spec_config();
        for name in ["ddpm", "ddim", "dpmpp-2m"] {
            let p = parse(&pairs(&[("sampler", name)]), &cfg).expect(name);
            assert_eq!(p.sampler.name(), name);
            let err = parse(&pairs(&[("sampler", name)]), &flow).expect_err(name);
            assert!(err.contains("euler, heun, midpoint"), "{err}");
        }
        for name in ["euler", "heun", "midpoint"] {
            assert_eq!(
                parse(&pairs(&[("sampler", name)]), &flow).expect(name).sampler.name(),
                name
            );
            let err = parse(&pairs(&[("sampler", name)]), &cfg).expect_err(name);
            assert!(err.contains("ddpm, ddim, dpmpp-2m"), "{err}");
        }
        let p = parse(&pairs(&[("guidance_interval", "0.2,0.8")]), &cfg).expect("interval");
        assert_eq!(p.guidance_interval, Some((0.2, 0.8)));
        assert_eq!(
            parse(&pairs(&[]), &cfg).expect("default").guidance_interval,
            SampleDefaults::DIFFUSION.guidance_interval
        );
        let all = parse(&pairs(&[("guidance_interval", "all")]), &cfg).expect("all");
        assert_eq!(all.guidance_interval, Some((0.0, 1.0)));
        for bad in ["0.8,0.2", "0.5", "-1,0.5", "0,2"] {
            let err = parse(&pairs(&[("guidance_interval", bad)]), &cfg).expect_err(bad);
            assert!(err.contains("0 <= LO <= HI <= 1"), "{err}");
        }
    }
}
