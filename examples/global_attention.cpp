// A first tour of Star: exact attention over one layer, and the merge that every
// distributed algorithm in the library is built from.
//
//   1. Lay out Q, K, V as [tokens, heads, head_dim] in memory you own.
//   2. Call global attention (exact, causal, parallel over TBB) and get (output, lse).
//   3. Split the keys in two, attend to each half separately, merge the two partial
//      states exactly, and check that the result equals attention over all keys.

#include <chrono>
#include <cmath>
#include <iostream>
#include <random>
#include <vector>

#include <star/star.hpp>

int main()
{
    // One layer of a small grouped-query model: 8 query heads share 2 KV heads.
    const star::Shape query_shape{4096, 8, 128};
    const star::Shape kv_shape{4096, 2, 128};

    // 1. Caller-owned memory; star::view wraps it without copying.
    std::mt19937 rng(42);
    std::normal_distribution<float> normal;
    const auto random_buffer = [&](const star::Shape& s) {
        std::vector<float> buffer(static_cast<std::size_t>(s.tokens * s.heads * s.head_dim));
        for (float& x : buffer)
            x = normal(rng);
        return buffer;
    };
    const std::vector<float> q = random_buffer(query_shape);
    const std::vector<float> k = random_buffer(kv_shape);
    const std::vector<float> v = random_buffer(kv_shape);
    const auto q_view = star::view(q.data(), query_shape);
    const auto k_view = star::view(k.data(), kv_shape);
    const auto v_view = star::view(v.data(), kv_shape);

    // 2. Exact causal attention. The result owns its output [tokens, heads, head_dim] and
    //    the log-sum-exp of the scores [tokens, heads].
    const auto start = std::chrono::steady_clock::now();
    const star::AttentionState exact = star::global_attention(q_view, k_view, v_view);
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;
    const double flops = 4.0 * double(query_shape.head_dim) * double(query_shape.heads) *
                         double(query_shape.tokens) * double(query_shape.tokens + 1) / 2;
    std::cout << "global causal attention, L=" << query_shape.tokens
              << ", 8 q / 2 kv heads, d=128: " << elapsed.count() << " ms, "
              << flops / elapsed.count() / 1e6 << " GFLOP/s\n";

    // 3. The last 100 tokens, as queries, attend to the two halves of the keys separately.
    //    CausalMask carries absolute positions so each half keeps its true place.
    const star::index query_tokens = 100;
    const star::index first_query = query_shape.tokens - query_tokens;
    const star::index half = query_shape.tokens / 2;
    const auto tail = star::token_slice(q_view, first_query, query_tokens);
    const star::AttentionState left =
        star::attention(tail, star::token_slice(k_view, 0, half),
                        star::token_slice(v_view, 0, half), star::CausalMask{first_query, 0});
    const star::AttentionState right =
        star::attention(tail, star::token_slice(k_view, half, kv_shape.tokens - half),
                        star::token_slice(v_view, half, kv_shape.tokens - half),
                        star::CausalMask{first_query, half});
    const std::vector<star::AttentionState> parts{left, right};
    const star::AttentionState merged = star::merge(parts);

    double largest_difference = 0.0;
    for (star::index t = 0; t < query_tokens; ++t)
        for (star::index h = 0; h < query_shape.heads; ++h)
            for (star::index c = 0; c < query_shape.head_dim; ++c)
                largest_difference = std::max(
                    largest_difference,
                    double(std::abs(merged.output(t, h, c) - exact.output(first_query + t, h, c))));
    std::cout << "merge of two key halves vs attention over all keys: max |difference| = "
              << largest_difference << "\n";
    return largest_difference < 1e-4 ? 0 : 1;
}
