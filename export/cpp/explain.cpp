// Runs a TorchScript explainer exported by `pyexplain export --format torchscript` on one image and
// writes its attribution map.
//
//   explain EXPLAINER.pt IMAGE.ppm OUT_PREFIX [TARGET]
//
// IMAGE is a binary PPM (P6, 8-bit RGB). It is resized (bilinear) to the explainer's input size when
// it has another size, scaled to [0, 1] and normalized with the mean/std stored in the explainer
// (ImageNet's when absent). TARGET is a class index; -1 or absent means the top-1 class.
// Writes OUT_PREFIX.npy (the map: attribution summed over channels, float32 [H, W]) and
// OUT_PREFIX.ppm (red = evidence for the target, blue = against, white = none), and prints the
// target and its logit.
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <fstream>
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
  in.get();  // the single whitespace byte before the pixels
  image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
  in.read(reinterpret_cast<char*>(image.rgb.data()), static_cast<std::streamsize>(image.rgb.size()));
  if (in.gcount() != static_cast<std::streamsize>(image.rgb.size())) throw std::runtime_error(path + ": truncated pixels");
  return image;
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

torch::Tensor preprocess(const Image& image, int64_t height, int64_t width, const std::vector<double>& mean,
                         const std::vector<double>& std) {
  auto pixels = torch::from_blob(const_cast<uint8_t*>(image.rgb.data()), {image.height, image.width, 3}, torch::kUInt8);
  auto x = pixels.permute({2, 0, 1}).to(torch::kFloat32).div(255.0).unsqueeze(0).contiguous();
  if (image.height != height || image.width != width) {
    x = at::upsample_bilinear2d(x, {height, width}, /*align_corners=*/false);
  }
  auto m = torch::tensor(std::vector<float>(mean.begin(), mean.end())).reshape({1, 3, 1, 1});
  auto s = torch::tensor(std::vector<float>(std.begin(), std.end())).reshape({1, 3, 1, 1});
  return (x - m) / s;
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
    std::cerr << "usage: explain EXPLAINER.pt IMAGE.ppm OUT_PREFIX [TARGET]\n";
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

    auto x = preprocess(read_ppm(argv[2]), static_cast<int64_t>(shape[1]), static_cast<int64_t>(shape[2]), mean, std);
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
              << logits[0][chosen].item<float>() << " -> " << prefix << ".npy, " << prefix << ".ppm\n";
  } catch (const std::exception& error) {
    std::string message = error.what();
    std::cerr << "error: " << message.substr(0, message.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
