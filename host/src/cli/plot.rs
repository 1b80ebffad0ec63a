//! The loss-curve picture that `host train` writes: loss and held-out accuracy per round.
//!
//! Text is drawn with a font built into the binary (`host/assets/DejaVuSans.ttf`, through
//! plotters' `ab_glyph` backend), so a machine without system fonts draws the same picture.

use std::{ffi::OsString, fs, ops::Range, path::Path};

use anyhow::{Context, Result, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

/// One point of the curve.
pub(super) struct Point {
    pub round: u32,
    pub loss: f64,
    pub accuracy: Option<f64>,
}

/// The picture's size in pixels.
const SIZE: (u32, u32) = (800, 500);

/// A subset of DejaVu Sans (Latin-1 and common punctuation); `host/assets/README.md` says how it
/// was made and under which licence it ships.
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Series with at most this many points get a marker on each point as well as the line.
const MARK_EVERY_POINT_UP_TO: usize = 40;

const LOSS_COLOUR: RGBColor = RGBColor(31, 119, 180);
const ACCURACY_COLOUR: RGBColor = RGBColor(214, 39, 40);

/// Draws loss (left axis) and held-out accuracy (right axis, 0..1) per round into a PNG at
/// `path`, 800x500.
///
/// Non-finite losses (a diverged run) and accuracies are left out: the loss line breaks where
/// they were, while the accuracy line joins the rounds that were measured. No points draw empty
/// axes; a point with no neighbour is drawn as a marker.
///
/// # Errors
///
/// When the picture cannot be drawn or written to `path`.
pub(super) fn loss_curve(path: &Path, title: &str, points: &[Point]) -> Result<()> {
    // Registering again replaces the entry with the same font: harmless, and it needs no
    // global state of our own.
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow!("the built-in font does not parse"))?;

    // plotters picks the image format from the file name, so draw to a sibling that ends in
    // `.png` and move it into place, which also keeps a half-written picture out of `path`.
    let mut staging = OsString::from(path.as_os_str());
    staging.push(".partial.png");
    let staging = Path::new(&staging);
    let drawn = draw(staging, title, points)
        .and_then(|()| fs::rename(staging, path).context("moving the picture into place"));
    if drawn.is_err() {
        let _ = fs::remove_file(staging);
    }
    drawn.with_context(|| format!("drawing the loss curve {}", path.display()))
}

fn draw(path: &Path, title: &str, points: &[Point]) -> Result<()> {
    let loss_segments = split_at_non_finite(points.iter().map(|p| (p.round, p.loss)));
    let accuracy: Vec<(u32, f64)> = points
        .iter()
        .filter_map(|p| Some((p.round, p.accuracy.filter(|a| a.is_finite())?)))
        .collect();

    let losses = loss_range(&loss_segments);
    let loss_label = loss_label_format(&losses);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(round_range(points), losses)?
        .set_secondary_coord(round_range(points), 0.0..1.0);

    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("loss")
        .y_label_formatter(&loss_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("held-out accuracy")
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;

    // One `draw_series` call per series carries its legend entry, even when it draws nothing.
    let loss_style = LOSS_COLOUR.stroke_width(2);
    chart
        .draw_series(
            loss_segments
                .iter()
                .map(|segment| PathElement::new(segment.clone(), loss_style)),
        )?
        .label("training loss (left)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], loss_style));
    let loss_count = loss_segments.iter().map(Vec::len).sum::<usize>();
    chart.draw_series(
        loss_segments
            .iter()
            .filter(|segment| loss_count <= MARK_EVERY_POINT_UP_TO || segment.len() == 1)
            .flatten()
            .map(|&point| Circle::new(point, 3, LOSS_COLOUR.filled())),
    )?;

    let accuracy_style = ACCURACY_COLOUR.stroke_width(2);
    chart
        .draw_secondary_series(std::iter::once(PathElement::new(
            accuracy.clone(),
            accuracy_style,
        )))?
        .label("held-out accuracy (right)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], accuracy_style));
    if accuracy.len() <= MARK_EVERY_POINT_UP_TO {
        chart.draw_secondary_series(
            accuracy
                .iter()
                .map(|&point| Circle::new(point, 3, ACCURACY_COLOUR.filled())),
        )?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;

    root.present()?;
    Ok(())
}

/// Splits `(round, value)` pairs into runs of finite values, dropping the others.
fn split_at_non_finite(values: impl Iterator<Item = (u32, f64)>) -> Vec<Vec<(u32, f64)>> {
    let mut segments = vec![Vec::new()];
    for (round, value) in values {
        match segments.last_mut() {
            Some(current) if value.is_finite() => current.push((round, value)),
            Some(current) if !current.is_empty() => segments.push(Vec::new()),
            _ => {}
        }
    }
    segments.retain(|segment| !segment.is_empty());
    segments
}

/// The rounds on the x axis: every point's, and never an empty range.
fn round_range(points: &[Point]) -> Range<u32> {
    let first = points.iter().map(|p| p.round).min().unwrap_or(0);
    let last = points.iter().map(|p| p.round).max().unwrap_or(1);
    if first < last {
        first..last
    } else {
        first.saturating_sub(1)..last.saturating_add(1)
    }
}

/// The losses on the left axis: from zero (or below, for a negative loss) to a little above the
/// largest, and never an empty range.
fn loss_range(segments: &[Vec<(u32, f64)>]) -> Range<f64> {
    let losses = || segments.iter().flatten().map(|&(_, loss)| loss);
    let low = losses().fold(0.0, f64::min);
    let high = losses().fold(f64::NEG_INFINITY, f64::max);
    let high = if high.is_finite() { high } else { 1.0 };
    let padded = high + 0.05 * (high - low);
    let high = if padded.is_finite() { padded } else { high };
    if low < high {
        low..high
    } else {
        low..low + 1.0
    }
}

/// How the loss axis writes its numbers: with as many decimals as its steps need, all alike, or
/// in scientific notation when they are very large or very small.
fn loss_label_format(range: &Range<f64>) -> impl Fn(&f64) -> String + use<> {
    let high = range.start.abs().max(range.end.abs());
    let step = (range.end - range.start) / 10.0;
    let scientific = !(1e-3..1e5).contains(&high);
    // `step` is positive and finite (see `loss_range`), so this is a small whole number.
    let decimals = (-step.log10()).ceil().clamp(0.0, 6.0) as usize;
    move |v| {
        if scientific && *v != 0.0 {
            format!("{v:.1e}")
        } else {
            format!("{v:.decimals$}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The width and height in a PNG's IHDR chunk, after checking the signature.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        // Signature (8), then the first chunk: length (4), type (4), then the IHDR data.
        assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is not IHDR");
        let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (word(16), word(20))
    }

    fn curve(rounds: u32) -> Vec<Point> {
        (0..rounds)
            .map(|round| {
                let t = f64::from(round);
                Point {
                    round,
                    loss: 2.3 * (-t / 5.0).exp() + 0.05,
                    accuracy: (round % 2 == 1).then(|| 1.0 - 0.9 * (-t / 4.0).exp()),
                }
            })
            .collect()
    }

    #[test]
    fn draws_a_curve_as_a_png_of_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        loss_curve(&path, "mlp-digits: 4 workers", &curve(20)).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(png_size(&bytes), SIZE);
        // Nothing left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn draws_empty_axes_for_no_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        loss_curve(&path, "no rounds yet", &[]).unwrap();
        assert_eq!(png_size(&fs::read(&path).unwrap()), SIZE);
    }

    #[test]
    fn draws_one_point_and_a_diverged_run() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        let point = Point {
            round: 0,
            loss: 2.3,
            accuracy: Some(0.1),
        };
        loss_curve(&one, "one round", &[point]).unwrap();
        assert_eq!(png_size(&fs::read(&one).unwrap()), SIZE);

        let mut diverged = curve(12);
        diverged[5].loss = f64::NAN;
        diverged[9].loss = f64::INFINITY;
        diverged[10].loss = f64::NAN;
        diverged[11].loss = f64::NEG_INFINITY;
        diverged[3].accuracy = Some(f64::NAN);
        let path = dir.path().join("diverged.png");
        loss_curve(&path, "diverged", &diverged).unwrap();
        assert_eq!(png_size(&fs::read(&path).unwrap()), SIZE);

        let none_finite: Vec<Point> = (0..3)
            .map(|round| Point {
                round,
                loss: f64::NAN,
                accuracy: None,
            })
            .collect();
        loss_curve(&path, "nothing finite", &none_finite).unwrap();
        assert_eq!(png_size(&fs::read(&path).unwrap()), SIZE);
    }

    #[test]
    fn loss_labels_use_the_precision_their_steps_need() {
        let label = loss_label_format(&(0.0..2.4));
        assert_eq!((label(&0.0), label(&1.5)), ("0.0".into(), "1.5".into()));
        assert_eq!(loss_label_format(&(0.0..0.002))(&0.0005), "0.0005");
        let huge = loss_label_format(&(0.0..1e30));
        assert_eq!((huge(&0.0), huge(&5e29)), ("0".into(), "5.0e29".into()));
    }

    #[test]
    fn splits_losses_at_non_finite_values() {
        let values = [1.0, f64::NAN, f64::NAN, 2.0, 3.0, f64::INFINITY];
        let segments = split_at_non_finite((0..).zip(values));
        assert_eq!(segments, vec![vec![(0, 1.0)], vec![(3, 2.0), (4, 3.0)]]);
        assert!(split_at_non_finite(std::iter::empty()).is_empty());
    }
}
