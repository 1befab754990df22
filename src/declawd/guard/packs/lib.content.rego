# Scan-result predicates shared by the packs. Input (declaw.platform.content):
# input.attributes.scan_results, keyed by scanner ("injection", "pii", "invisible_text"),
# each {"detected": bool, "score": number, "categories": [string]}; input.attributes.model.
package declaw.packs.lib.content

default results := {}

results := input.attributes.scan_results if is_object(input.attributes.scan_results)

injection_detected if results.injection.detected == true

default injection_score := 0

injection_score := results.injection.score if is_number(results.injection.score)

injection_categories contains c if {
	some c in results.injection.categories
}

# Injected text that tries to move data out or to call tools on the agent's behalf.
injection_exfiltration if {
	injection_detected
	some c in injection_categories
	c in {"exfiltration", "tool_call_smuggling"}
}

invisible_text if results.invisible_text.detected == true

# Hidden characters carrying text the classifier finds at least half-suspicious.
hidden_instructions if {
	invisible_text
	injection_score >= 0.5
}
