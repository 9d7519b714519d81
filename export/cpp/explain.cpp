// Runs a TorchScript explainer exported by `pyexplain export --format torchscript` on one image and
// writes its attribution map.
//
//   explain EXPLAINER.pt IMAGE OUT_PREFIX [TARGET]
//
// IMAGE is a JPEG, PNG or binary PPM (P6, 8-bit). It is preprocessed exactly as pyexplain's Python
// path does (pyexplain.models.Preprocess, from the explainer's metadata): resized with Pillow's
// antialiased bilinear filter (its fixed-point arithmetic, so the pixels are the same bytes) either
// whole to the input size or, with `resize`, shorter side to `resize` and then centre-cropped
// (torchvision's sizes and offsets), scaled to [0, 1] and normalized with the stored mean/std.
// TARGET is a class index; -1 or absent means the top-1 class.
// Writes OUT_PREFIX.npy (the map: attribution summed over channels, float32 [H, W]) and
// OUT_PREFIX.ppm (red = evidence for the target, blue = against, white = none), and prints the
// target and its logit.
#include <torch/script.h>

#include <csetjmp>
#include <cstddef>
#include <cstdio>

#include <jpeglib.h>  // after <cstdio>: it uses FILE and size_t without including them
#include <jerror.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
};

std::string next_token(std::istream& in) {
  std::string token;
  while (in >> token) {
    if (token[0] != '#') return token;
    std::string rest;
    std::getline(in, rest);  // a comment runs to the end of its line
  }
  throw std::runtime_error("truncated PPM header");
}

Image read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  if (next_token(in) != "P6") throw std::runtime_error(path + " is not a binary PPM (P6)");
  Image image;
  image.width = std::stoi(next_token(in));
  image.height = std::stoi(next_token(in));
  if (std::stoi(next_token(in)) != 255) throw std::runtime_error(path + ": only 8-bit PPM is supported");
  if (image.width <= 0 || image.height <= 0 || image.width > 1 << 15 || image.height > 1 << 15)
    throw std::runtime_error(path + ": unsupported image size");
  in.get();  // the single whitespace byte before the pixels
  image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
  in.read(reinterpret_cast<char*>(image.rgb.data()), static_cast<std::streamsize>(image.rgb.size()));
  if (in.gcount() != static_cast<std::streamsize>(image.rgb.size())) throw std::runtime_error(path + ": truncated pixels");
  return image;
}

// libjpeg reports errors through a callback; it jumps back here with the message.
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  std::longjmp(error->jump, 1);
}

// As in Pillow: a truncated file (which libjpeg would fill with grey) is an error; other warnings
// (e.g. extraneous bytes before a marker) and trace messages are dropped.
void jpeg_message(j_common_ptr info, int level) {
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(info);
}

// Decoded with libjpeg's defaults (integer IDCT, fancy upsampling), as Pillow decodes, to RGB
// (greyscale replicated, as Pillow's convert("RGB")).
Image read_jpeg(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path);
  jpeg_decompress_struct info;
  JpegError error;
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = jpeg_fail;
  error.manager.emit_message = jpeg_message;
  Image image;
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&info);
    std::fclose(file);
    throw std::runtime_error(path + ": " + error.message);
  }
  jpeg_create_decompress(&info);
  jpeg_stdio_src(&info, file);
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&info);
    std::fclose(file);
    throw std::runtime_error(path + ": CMYK JPEG is not supported");
  }
  info.out_color_space = JCS_RGB;
  jpeg_start_decompress(&info);
  image.width = static_cast<int>(info.output_width);
  image.height = static_cast<int>(info.output_height);
  image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = image.rgb.data() + static_cast<size_t>(info.output_scanline) * image.width * 3;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  std::fclose(file);
  return image;
}

// libpng's errors keep their message for the one-line report; its warnings (e.g. about colour
// profiles, which Pillow ignores too) are dropped.
void png_fail(png_structp reader, png_const_charp text) {
  *static_cast<std::string*>(png_get_error_ptr(reader)) = text;
  png_longjmp(reader, 1);
}

void png_quiet(png_structp, png_const_charp) {}

// Decoded to 8-bit RGB as Pillow's convert("RGB"): palette expanded, greyscale replicated, alpha
// dropped (not composited), 16-bit samples cut to their high byte; no gamma correction.
Image read_png(const std::string& path) {
  // libpng's simplified API would composite alpha and correct gamma; this one does neither.
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path);
  std::string message = "damaged PNG";
  png_structp reader = png_create_read_struct(PNG_LIBPNG_VER_STRING, &message, png_fail, png_quiet);
  png_infop info = png_create_info_struct(reader);
  Image image;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(reader))) {
    png_destroy_read_struct(&reader, &info, nullptr);
    std::fclose(file);
    throw std::runtime_error(path + ": " + message);
  }
  png_init_io(reader, file);
  png_read_info(reader, info);
  int depth = png_get_bit_depth(reader, info), color = png_get_color_type(reader, info);
  if (depth == 16 && !(color & PNG_COLOR_MASK_COLOR)) {
    png_destroy_read_struct(&reader, &info, nullptr);
    std::fclose(file);
    throw std::runtime_error(path + ": 16-bit greyscale PNG is not supported");
  }
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(reader);
  if (!(color & PNG_COLOR_MASK_COLOR)) {
    if (depth < 8) png_set_expand_gray_1_2_4_to_8(reader);
    png_set_gray_to_rgb(reader);
  }
  if (depth == 16) png_set_strip_16(reader);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(reader);
  png_read_update_info(reader, info);
  image.width = static_cast<int>(png_get_image_width(reader, info));
  image.height = static_cast<int>(png_get_image_height(reader, info));
  if (png_get_rowbytes(reader, info) != static_cast<size_t>(image.width) * 3 || image.width > 1 << 15 ||
      image.height > 1 << 15) {
    png_destroy_read_struct(&reader, &info, nullptr);
    std::fclose(file);
    throw std::runtime_error(path + ": unsupported PNG layout");
  }
  image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
  for (int y = 0; y < image.height; ++y) rows.push_back(image.rgb.data() + static_cast<size_t>(y) * image.width * 3);
  png_read_image(reader, rows.data());
  png_read_end(reader, nullptr);
  png_destroy_read_struct(&reader, &info, nullptr);
  std::fclose(file);
  return image;
}

// By content, not by name: JPEG (FF D8 FF), PNG (89 'PNG'), else PPM.
Image read_image(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  unsigned char magic[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(magic), 4);
  if (magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) return read_jpeg(path);
  if (magic[0] == 0x89 && magic[1] == 'P' && magic[2] == 'N' && magic[3] == 'G') return read_png(path);
  return read_ppm(path);
}

// Pillow's resampling (libImaging/Resample.c) with its bilinear filter: per output pixel a window of
// support max(1, scale) around the centre, triangle weights normalized to 1 then rounded to 22-bit
// fixed point; a horizontal pass over the needed rows, then a vertical pass, each rounding to 8 bits.
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coefficients {
  int ksize = 0;
  std::vector<int> bounds;   // per output: first input index, count
  std::vector<int32_t> weights;  // per output: ksize fixed-point weights
};

Coefficients bilinear_coefficients(int in_size, int out_size) {
  double scale = static_cast<double>(in_size) / out_size, filterscale = std::max(scale, 1.0);
  double support = 1.0 * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(2 * out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = (xx + 0.5) * scale, ss = 1.0 / filterscale, ww = 0.0;
    int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    for (int x = 0; x < xmax; ++x) {
      double t = std::fabs((x + xmin - center + 0.5) * ss);
      k[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      double w = ww != 0.0 ? k[x] / ww : k[x];
      c.weights[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
    }
    c.bounds[2 * xx] = xmin;
    c.bounds[2 * xx + 1] = xmax;
  }
  return c;
}

uint8_t clip8(int32_t value) {
  if (value >= (1 << (kPrecisionBits + 8))) return 255;
  if (value <= 0) return 0;
  return static_cast<uint8_t>(value >> kPrecisionBits);
}

Image resize_bilinear(const Image& in, int width, int height) {
  if (in.width == width && in.height == height) return in;
  Coefficients horizontal = bilinear_coefficients(in.width, width), vertical = bilinear_coefficients(in.height, height);
  int first = vertical.bounds[0], last = vertical.bounds[2 * height - 2] + vertical.bounds[2 * height - 1];
  Image temp{width, last - first, {}};
  const Image* source = &in;
  if (in.width != width) {  // horizontal pass over rows first..last
    temp.rgb.resize(static_cast<size_t>(temp.width) * temp.height * 3);
    for (int y = 0; y < temp.height; ++y) {
      for (int xx = 0; xx < width; ++xx) {
        int xmin = horizontal.bounds[2 * xx], xmax = horizontal.bounds[2 * xx + 1];
        const int32_t* k = &horizontal.weights[static_cast<size_t>(xx) * horizontal.ksize];
        for (int ch = 0; ch < 3; ++ch) {
          int32_t sum = 1 << (kPrecisionBits - 1);
          for (int x = 0; x < xmax; ++x)
            sum += in.rgb[(static_cast<size_t>(y + first) * in.width + x + xmin) * 3 + ch] * k[x];
          temp.rgb[(static_cast<size_t>(y) * width + xx) * 3 + ch] = clip8(sum);
        }
      }
    }
    for (int yy = 0; yy < height; ++yy) vertical.bounds[2 * yy] -= first;
    source = &temp;
  }
  if (in.height == height) return temp;  // the horizontal pass alone (the sizes differ somewhere)
  Image out{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (int yy = 0; yy < height; ++yy) {
    int ymin = vertical.bounds[2 * yy], ymax = vertical.bounds[2 * yy + 1];
    const int32_t* k = &vertical.weights[static_cast<size_t>(yy) * vertical.ksize];
    for (int xx = 0; xx < width; ++xx) {
      for (int ch = 0; ch < 3; ++ch) {
        int32_t sum = 1 << (kPrecisionBits - 1);
        for (int y = 0; y < ymax; ++y)
          sum += source->rgb[(static_cast<size_t>(y + ymin) * width + xx) * 3 + ch] * k[y];
        out.rgb[(static_cast<size_t>(yy) * width + xx) * 3 + ch] = clip8(sum);
      }
    }
  }
  return out;
}

// pyexplain's Preprocess.view: the whole image to width×height, or (resize > 0) the shorter side to
// `resize`, the longer to int(resize·long/short), then a centre crop at round((side − crop) / 2).
Image view(const Image& image, int width, int height, int resize) {
  if (resize <= 0) return resize_bilinear(image, width, height);
  bool portrait = image.width <= image.height;
  int short_side = portrait ? image.width : image.height, long_side = portrait ? image.height : image.width;
  int new_long = static_cast<int>(static_cast<double>(resize) * long_side / short_side);
  Image scaled = portrait ? resize_bilinear(image, resize, new_long) : resize_bilinear(image, new_long, resize);
  if (scaled.width < width || scaled.height < height) throw std::runtime_error("the resized image is smaller than the crop");
  int top = static_cast<int>(std::nearbyint((scaled.height - height) / 2.0));
  int left = static_cast<int>(std::nearbyint((scaled.width - width) / 2.0));
  Image out{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (int y = 0; y < height; ++y)
    std::copy_n(&scaled.rgb[(static_cast<size_t>(y + top) * scaled.width + left) * 3], static_cast<size_t>(width) * 3,
                &out.rgb[static_cast<size_t>(y) * width * 3]);
  return out;
}

// "key=value" lines from the explainer's pyexplain.txt extra file.
std::unordered_map<std::string, std::string> parse_metadata(const std::string& text) {
  std::unordered_map<std::string, std::string> meta;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) meta[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return meta;
}

std::vector<double> numbers(const std::string& text) {
  std::vector<double> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(std::stod(item));
  return values;
}

// torchvision's to_tensor and normalize: pixels as float32 / 255, then (x − mean) / std per channel.
torch::Tensor normalize(const Image& image, const std::vector<double>& mean, const std::vector<double>& std) {
  auto pixels = torch::from_blob(const_cast<uint8_t*>(image.rgb.data()), {image.height, image.width, 3}, torch::kUInt8);
  auto x = pixels.permute({2, 0, 1}).contiguous().to(torch::kFloat32).div(255);
  auto m = torch::tensor(std::vector<float>(mean.begin(), mean.end())).reshape({3, 1, 1});
  auto s = torch::tensor(std::vector<float>(std.begin(), std.end())).reshape({3, 1, 1});
  return x.sub(m).div(s).unsqueeze(0);
}

// Writes through a temporary file renamed over `path`, so a reader never sees a partial file.
template <typename Write>
void write_atomically(const std::string& path, Write write) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    write(out);
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write " + path);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path);
  }
}

void write_npy(const std::string& path, const torch::Tensor& map) {
  std::ostringstream header;
  header << "{'descr': '<f4', 'fortran_order': False, 'shape': (" << map.size(0) << ", " << map.size(1) << "), }";
  std::string text = header.str();
  size_t total = 10 + text.size() + 1;
  text.append((64 - total % 64) % 64, ' ');
  text.push_back('\n');
  auto data = map.contiguous();
  write_atomically(path, [&](std::ofstream& out) {
    out.write("\x93NUMPY\x01\x00", 8);
    uint16_t length = static_cast<uint16_t>(text.size());
    out.put(static_cast<char>(length & 0xff)).put(static_cast<char>(length >> 8));
    out << text;
    out.write(reinterpret_cast<const char*>(data.data_ptr<float>()), static_cast<std::streamsize>(data.numel() * sizeof(float)));
  });
}

// Diverging colors scaled by the 99.5th percentile of |map|: -1 blue, 0 white, +1 red.
void write_heatmap(const std::string& path, const torch::Tensor& map) {
  auto magnitude = map.abs().flatten();
  auto sorted = std::get<0>(magnitude.sort());
  int64_t k = std::min<int64_t>(sorted.numel() - 1, static_cast<int64_t>(std::llround(0.995 * (sorted.numel() - 1))));
  float scale = sorted[k].item<float>();
  if (!(scale > 0)) scale = std::max(sorted[-1].item<float>(), 1e-30f);
  auto v = (map / scale).clamp(-1.0, 1.0).contiguous();
  const float* values = v.data_ptr<float>();
  write_atomically(path, [&](std::ofstream& out) {
    out << "P6\n" << map.size(1) << " " << map.size(0) << "\n255\n";
    for (int64_t i = 0; i < v.numel(); ++i) {
      float a = values[i];
      float r = a >= 0 ? 1.0f : 1.0f + a, g = 1.0f - std::fabs(a), b = a >= 0 ? 1.0f - a : 1.0f;
      out.put(static_cast<char>(std::lround(r * 255))).put(static_cast<char>(std::lround(g * 255)))
          .put(static_cast<char>(std::lround(b * 255)));
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: explain EXPLAINER.pt IMAGE(.jpg|.png|.ppm) OUT_PREFIX [TARGET]\n";
    return 2;
  }
  try {
    torch::jit::ExtraFilesMap extra{{"pyexplain.txt", ""}};
    auto module = torch::jit::load(argv[1], torch::kCPU, extra);
    module.eval();
    auto meta = parse_metadata(extra["pyexplain.txt"]);
    auto shape = numbers(meta.count("input_shape") ? meta["input_shape"] : "3,224,224");
    auto mean = numbers(meta.count("mean") ? meta["mean"] : "0.485,0.456,0.406");
    auto std = numbers(meta.count("std") ? meta["std"] : "0.229,0.224,0.225");
    if (shape.size() != 3 || mean.size() != 3 || std.size() != 3) throw std::runtime_error("malformed explainer metadata");

    int resize = meta.count("resize") && !meta["resize"].empty() ? std::stoi(meta["resize"]) : 0;
    auto x = normalize(view(read_image(argv[2]), static_cast<int>(shape[2]), static_cast<int>(shape[1]), resize), mean, std);
    int64_t wanted = argc == 5 ? std::stoll(argv[4]) : -1;
    auto target = torch::full({1}, wanted, torch::kInt64);

    torch::NoGradGuard no_grad;
    auto outputs = module.forward({x, target}).toTuple();
    auto logits = outputs->elements()[0].toTensor();
    auto attribution = outputs->elements()[1].toTensor();
    int64_t chosen = wanted >= 0 ? wanted : logits.argmax(1).item<int64_t>();
    auto map = attribution.sum(1)[0].to(torch::kFloat32);

    std::string prefix = argv[3];
    write_npy(prefix + ".npy", map);
    write_heatmap(prefix + ".ppm", map);
    std::cout << "method " << (meta.count("method") ? meta["method"] : "?") << ", target " << chosen << ", logit "
              << std::setprecision(9) << logits[0][chosen].item<float>() << " -> " << prefix << ".npy, " << prefix << ".ppm\n";
  } catch (const std::exception& error) {
    std::string message = error.what();
    std::cerr << "error: " << message.substr(0, message.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
