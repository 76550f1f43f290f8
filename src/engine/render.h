// Scorecard renderings: terminal text, Markdown, CSV and one self-contained HTML page. Everything
// that came from user input is escaped for the format; numbers are written the same way in all four.
#pragma once
#include <cstddef>
#include <string>

#include "engine/scorecard.h"

namespace slm::engine {

struct LadderView;

std::string render_text(const Scorecard& s);
std::string render_markdown(const Scorecard& s);
std::string render_csv(const Scorecard& s);
std::string render_html(const Scorecard& s);  // render_html.cpp; self-contained: inline CSS and SVG, no script

// The phrases every format shares (render.cpp), so a verdict reads the same in each.
namespace phrase {
std::string short_id(const std::string& id);            // a substrate id cut to 16, or "(not reported)"
std::string group_title(const Scorecard& s, size_t i);  // "substrate ... (data ...)"
std::string noise_text(const Group& g);                 // the noise floor and what it rests on
std::string rule_text(const Scorecard& s);              // the decision rule in one sentence
std::string family_text(const Scorecard& s, const Group& g);  // per phase: the false-verdict rate the rule implies
std::string mean_text(const Card& c);
// The metrics a card has besides the rule's, as means of its counted runs' bests ("val_bpb 1.2345, sri_bpb 2.0100"; "-").
std::string other_metrics_text(const Card& c, const std::string& rule_metric);                   // "mean +- sd"
std::string run_value_text(const RunView& v);           // "value @ step"
std::string run_status_text(const RunView& v);          // status, with the provisional ratio
std::string card_compile(const Card& c);                // pooled compile rate with its interval
std::string run_reason(const RunView& v);               // status reason, spike note, compile rates
std::string cost_ratio_text(const Card& c);             // "params 1.78x, FLOPs/tok 1.10x, wall 1.25x" vs the base
std::string equal_compute_text(const Card& c);          // the delta at equal training FLOPs, labelled interpolated
std::string stack_text(const Card& c);                  // stacking: predicted vs measured
std::string html_escape(const std::string& s);          // & < > " ' as entities
// The scale ladder (engine/ladder.h): one experiment on one rung ("-1.25% keep (n 2)"; "-" when not
// run there), the section's title, and one smaller rung's decision agreement with the target.
std::string ladder_cell(const Card* c);
std::string ladder_title(const LadderView& v);
std::string agreement_line(const LadderView& v, size_t rung);
// The decision accuracy figure, said once for every format.
extern const char* const kAgreementNote;
}  // namespace phrase

}  // namespace slm::engine
