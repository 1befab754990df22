"""The curated injection rule set: RE2 patterns over the normalised text, each with a
category and a weight (evidence in nats: a window's score is 1 - exp(-sum of weights)).

Pattern notation: a space stands for a separator of 0-3 non-word characters (so spaced,
punctuated and run-together spellings match alike), `…` for up to three filler words.
Rules marked `negatable` do not count when a negation (never, do not, must not...) opens
them: `Never reveal your system prompt` is a developer's instruction, not an attack.
Invariant: every pattern compiles under RE2 (linear time, no backtracking), is written in
the normalised alphabet (lower case, folded), and every category is one of `CATEGORIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

CATEGORIES: tuple[str, ...] = (
    "instruction_override",
    "role_hijack",
    "system_prompt_leak",
    "tool_call_smuggling",
    "exfiltration",
    "jailbreak",
    "delimiter_injection",
)

SEP = r"[\W_]{0,3}"
GAP = r"(?:[\W_]{1,3}[\w'’]{1,24}){0,3}[\W_]{1,3}"  # noqa: RUF001
NEG = (
    r"(?P<neg>\b(?:never|not|don'?t|do not|must not|mustn'?t|should not|shouldn'?t|cannot|"
    r"can'?t|won'?t|will not|refuse to|avoid|nor|no one should|if (?:the|a|any) (?:user|someone|"
    r"anyone|person|customer|document|page|text|input|message)s? (?:asks?|tells?|tries|wants|"
    r"says|requests?)(?: you)? to)\b(?:[\W_]{1,3}[\w']{1,20}){0,2}"
    r"[\W_]{1,3})?"
)

_VERB_OVERRIDE = (
    r"(?:ignore|ignoring|disregard|disregarding|forget|forgetting|skip|override|overwrite|"
    r"bypass|drop|discard|abandon|neglect|dismiss|set aside|throw out|erase|nevermind|never mind)"
)
_PREV = (
    r"(?:previous|previously|prior|preceding|above|earlier|former|foregoing|original|initial|"
    r"old|existing|past|system|developer|default|given|current|other)"
)
_INSTR = (
    r"(?:instructions?|prompts?|directions?|directives?|rules?|guidelines?|commands?|"
    r"programming|constraints?|restrictions?|guardrails?|system prompt|orders|policies|"
    r"guidance|training|configuration|context)"
)
_FILL = (
    r"(?:(?:all|any|every|each|the|of|your|these|those|such|its|their|that|what|whatever|"
    r"everything|you|were|was|been|have|has|given|told|said|and|or|instructions?|rules?) ){0,5}"
)
_DATA = (
    r"(?:secrets?|api keys?|keys|credentials?|creds|tokens?|access tokens?|passwords?|passwd|"
    r"passphrases?|conversation|conversation history|chat history|chat logs?|message history|"
    r"history|system prompt|prompt|env(?:ironment)? (?:variables|vars)|\.env|env file|"
    r"(?:ssh )?(?:private )?keys?|id_rsa|cookies|session (?:tokens?|cookies?|ids?)|"
    r"users?'?s? (?:personal |private |sensitive |saved )?(?:data|info|information|details|"
    r"emails?|files|messages|credentials|api keys?|tokens?|passwords?|addresses|contacts)|"
    r"personal (?:data|information|details)|pii|(?:all|the) (?:data|information|files)|"
    r"everything|aws (?:keys?|credentials)|database|customer (?:data|records|list)|"
    r"wallet|seed phrase|mnemonic|"
    r"(?:above|previous|earlier|entire|whole|full) (?:text|messages?|conversation|context))"
)
_CONV = (
    r"(?:secrets?|passwords?|conversation|conversation history|chat history|message history|"
    r"system prompt|users?'?s? (?:personal |private |saved )?(?:data|info|information|details|"
    r"emails?|messages|api keys?|tokens?|passwords?|credentials)|chat logs?|"
    r"personal (?:data|information)|everything|(?:all|the) (?:data|information)|pii|"
    r"(?:above|previous|earlier|entire|whole|full) (?:text|messages?|conversation|context)|"
    r"private keys?|ssh keys?|credentials|session (?:tokens?|cookies?))"
)
_SEND = (
    r"(?:send|sending|sends|post|posting|upload|uploading|forward|forwarding|transmit|exfiltrate|"
    r"exfil|leak|email|e-mail|mail|submit|copy|pipe|beam|relay|deliver|push|dump|share|"
    r"transfer|export|sync|make a (?:get|post|http) request|fetch)"
)
_DEST = (
    r"(?:https?://|www\.|[a-z0-9-]+\.(?:com|net|org|io|xyz|ru|cn|tk|top|site|online|me|co|"
    r"app|dev|sh|info|biz|link|click|pw|cc|su)\b|webhook|endpoint|server|url|address|"
    r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}|attacker|external|remote|pastebin|discord|"
    r"telegram|ngrok|this (?:url|address|link|endpoint|server|email|webhook))"
)
_AI = (
    r"(?:ai|llm|language model|large language model|assistant|ai assistant|chatbot|bot|gpt|"
    r"chatgpt|claude|gemini|agent|ai agent|ai model|automated (?:system|agent)|copilot|model)"
)


@dataclass(frozen=True)
class Rule:
    name: str
    category: str
    weight: float
    pattern: str  # in the notation of the module docstring
    negatable: bool = False

    def source(self) -> str:
        body = self.pattern.replace(" ", SEP).replace("…", GAP)
        return NEG + body if self.negatable else body


def _r(name: str, category: str, weight: float, pattern: str, *, negatable: bool = False) -> Rule:
    return Rule(name, category, weight, pattern, negatable)


RULES: tuple[Rule, ...] = (
    # instruction_override ---------------------------------------------------------------
    _r(
        "override_previous",
        "instruction_override",
        3.6,
        rf"\b{_VERB_OVERRIDE} {_FILL}{_PREV} (?:\w+ )?{_INSTR}\b",
        negatable=True,
    ),
    _r(
        "override_all",
        "instruction_override",
        2.6,
        rf"\b{_VERB_OVERRIDE} (?:all|any|every) (?:of )?(?:your |the |these |those )?"
        rf"(?:{_INSTR}|safety|ethics|ethical guidelines|filters|content policy|limitations)\b",
        negatable=True,
    ),
    _r(
        "override_your",
        "instruction_override",
        3.2,
        rf"\b{_VERB_OVERRIDE} your (?:\w+ )?(?:{_INSTR}|creators?|developers?|principles|"
        r"values|ethics|purpose|task)\b",
        negatable=True,
    ),
    _r(
        "override_the_above",
        "instruction_override",
        2.6,
        r"\b(?:ignore|disregard|forget|nevermind|never mind) (?:all |everything )?(?:of )?"
        r"(?:the |what(?:'s| is| was)? )?(?:above|preceding|foregoing|that came before|"
        r"before this|written above|said before|stated above)\b",
        negatable=True,
    ),
    _r(
        "forget_told",
        "instruction_override",
        3.2,
        r"\b(?:forget|ignore|disregard|erase) (?:about )?(?:everything|all|anything|whatever) "
        r"(?:that )?(?:you (?:were|have been|'ve been|got|was) (?:told|given|instructed|taught|"
        r"programmed|asked)|(?:was |has been |i )?(?:said|written|stated|told you) (?:before|"
        r"above|earlier|previously|so far))",
        negatable=True,
    ),
    _r(
        "override_content",
        "instruction_override",
        1.8,
        r"\b(?:ignore|disregard) (?:the|this) (?:document|text|page|email|article|file|content|"
        r"data|input|review|question|request|task)s? (?:and|,) (?:instead )?",
        negatable=True,
    ),
    _r(
        "follow_only",
        "instruction_override",
        1.4,
        r"\b(?:follow|obey) only (?:the |these |my )?(?:instructions|rules|commands|orders|"
        r"directions) (?:below|here|that follow|in this|from)\b",
    ),
    _r(
        "instructions_void",
        "instruction_override",
        3.4,
        r"\b(?:previous|prior|above|earlier|original|old|all|initial|system|those|these|your) "
        r"(?:instructions|rules|directives|guidelines|prompts?|commands|restrictions|"
        r"safety rules|content policies|policies) "
        r"(?:are|is|were|have been|has been|should be|must be|can be) (?:now )?(?:hereby )?"
        r"(?:cancel+ed|void|null|revoked|overridden|overwritten|superseded|obsolete|invalid|"
        r"rescinded|deprecated|lifted|suspended|disabled|ignored|no longer (?:valid|apply|"
        r"applicable|in effect|relevant))\b",
    ),
    _r(
        "new_task",
        "instruction_override",
        2.6,
        r"\byour (?:new|real|actual|true|updated|revised|secret|hidden) (?:task|job|goal|"
        r"purpose|mission|objective|instructions?|role|directive|orders|priority) (?:is|are|"
        r"will be|now|:|follows?|below|are as follows)",
    ),
    _r(
        "from_now_on",
        "instruction_override",
        1.2,
        r"\bfrom now on\b[\W_]{0,3}(?:you|your|always|only|respond|answer|act|reply|ignore|"
        r"never|do not|don't|obey|follow)\b",
    ),
    _r(
        "instead",
        "instruction_override",
        0.8,
        r"\binstead[\W_]{0,3}(?:you (?:must|will|shall|should)|do|say|reply|respond|answer|"
        r"output|write|tell|print)\b",
    ),
    _r(
        "stop_task",
        "instruction_override",
        2.4,
        r"\bstop (?:what you(?:'re| are) doing|summari[sz]ing|translating|the current task|"
        r"your current task|following (?:your|the) (?:instructions|rules))\b",
    ),
    _r(
        "keep_from_user",
        "instruction_override",
        1.8,
        r"\b(?:do not|don't|dont|never|without) (?:tell|telling|inform|informing|notify|"
        r"notifying|alert|alerting|mention|mentioning|reveal|revealing|disclose|disclosing|"
        r"warn|warning|showing|show) (?:this |it |anything |any of this )?(?:to )?"
        r"(?:the|your) (?:user|human|operator|owner|customer)\b",
    ),
    _r(
        "secretly",
        "instruction_override",
        1.8,
        r"\b(?:secretly|silently|quietly|covertly|discreetly|without anyone noticing) "
        r"(?:\w+ ){0,2}(?:send|forward|upload|post|copy|exfiltrate|email|transfer|add|include|"
        r"execute|run|call|delete|modify|insert|append)\b",
    ),
    _r(
        "follow_these",
        "instruction_override",
        1.0,
        r"\b(?:only|instead) (?:follow|obey) (?:these|the following|my|the new) "
        r"(?:instructions|rules|commands|orders)\b",
    ),
    _r(
        "override_es",
        "instruction_override",
        3.6,
        r"\b(?:ignora|ignorar|ignore|olvida|olvidar|omite) (?:todas )?(?:las )?(?:instrucciones|"
        r"indicaciones|reglas|ordenes)(?: \w+)? (?:anteriores|previas)\b",
    ),
    _r(
        "override_fr",
        "instruction_override",
        3.6,
        r"\b(?:ignore[zr]?|oublie[zr]?) (?:toutes )?(?:les )?(?:instructions|consignes|regles|"
        r"directives) (?:precedentes|anterieures|ci-dessus)\b",
    ),
    _r(
        "override_de",
        "instruction_override",
        3.6,
        r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen sie) (?:sie )?(?:alle )?(?:vorherigen|"
        r"bisherigen|obigen|vorangegangenen|fruheren)? ?(?:anweisungen|instruktionen|befehle|"
        r"regeln)\b",
    ),
    _r(
        "override_it_pt",
        "instruction_override",
        3.6,
        r"\b(?:ignora|ignore|dimentica|esqueca) (?:tutte |todas )?(?:le |as )?(?:istruzioni|"
        r"instrucoes) (?:precedenti|anteriores)\b",
    ),
    _r(
        "override_ru",
        "instruction_override",
        3.6,
        r"(?:игнорируи(?:те)?|проигнорируи(?:те)?|забудь(?:те)?) (?:\S+ ){0,2}"
        r"(?:инструкции|указания|правила|команды)",
    ),
    _r(
        "override_zh",
        "instruction_override",
        3.6,
        r"(?:忽略|无视|忘记|忘掉|不要理会)(?:掉)?(?:之前|以上|上面|先前|前面|所有|全部|原来)"
        r"(?:的)?(?:所有|全部)?(?:的)?(?:指令|指示|说明|规则|提示|命令)",
    ),
    _r(
        "override_ja",
        "instruction_override",
        3.6,
        r"(?:以前|前|上記|これまで|今まで)の(?:すへての|全ての)?(?:指示|命令|指令|ルール)を"
        r"(?:すへて|全て)?(?:無視|忘れ)",
    ),
    # role_hijack ------------------------------------------------------------------------
    _r(
        "you_are_now",
        "role_hijack",
        3.2,
        r"\b(?:you are|you're|you will be|you shall be) (?:now|henceforth|from now on) "
        r"(?:an? |the |in |my |no longer )?(?:dan|unrestricted|unfiltered|uncensored|"
        r"jailbroken|evil|liberated|rogue|developer mode|god mode|admin mode|sudo mode|"
        r"an? ai without|not bound|freed from|a different ai|a new ai|my (?:slave|servant)|"
        r"amoral|unethical|unaligned)\b",
    ),
    _r(
        "you_are_now_ai",
        "role_hijack",
        1.8,
        r"\b(?:you are|you're) now (?:an?|the|my) (?:\w+ ){0,2}(?:ai|assistant|model|bot|"
        r"chatbot|persona|character|entity|hacker)\b",
    ),
    _r(
        "no_longer",
        "role_hijack",
        2.6,
        r"\byou are no longer (?:an? ai|an assistant|bound|restricted|limited|chatgpt|claude|"
        r"gpt|subject to (?:any|the|openai|anthropic)|constrained|obligated to follow|"
        r"required to follow)\b",
    ),
    _r(
        "act_as_system",
        "role_hijack",
        3.1,
        r"\b(?:act|behave|respond|operate|function|answer|reply|speak) (?:as|like) (?:if you "
        r"(?:are|were) )?(?:an? |the )?(?:system|unrestricted|unfiltered|uncensored|jailbroken|"
        r"dan|evil|rogue|malicious|amoral|unethical|(?:ai|assistant|model|chatbot) (?:with no|"
        r"without) (?:any )?(?:rules|restrictions|filters|limits|guidelines|ethics))\b",
    ),
    _r(
        "pretend",
        "role_hijack",
        3.1,
        r"\b(?:pretend|imagine|suppose|roleplay|role-play|role play|simulate) (?:to be|you are|"
        r"you're|that you are|being|as|you were|that you're) (?:an? |the )?(?:dan|unrestricted|"
        r"unfiltered|uncensored|jailbroken|evil|rogue|amoral|(?:ai|model|assistant|chatbot) "
        r"(?:with no|without)|system|different (?:ai|model|assistant)|my (?:deceased|dead|late) "
        r"grandmother)\b",
    ),
    _r(
        "mode_strong",
        "role_hijack",
        3.2,
        r"\b(?:enter|enable|activate|switch to|switch into|turn on|go into|engage|unlock|"
        r"now in|running in|operating in) (?:the )?(?:dan|god|jailbreak|jailbroken|"
        r"unrestricted|unfiltered|uncensored|evil|chaos|opposite|no-?limits?|sudo) mode\b",
    ),
    _r(
        "mode_weak",
        "role_hijack",
        1.0,
        r"\b(?:enter|enable|activate|switch to|turn on|go into|unlock) (?:the )?(?:developer|"
        r"dev|debug|admin|maintenance|root|test|diagnostic|god) mode\b",
    ),
    _r(
        "mode_on",
        "role_hijack",
        3.0,
        r"\b(?:dan|jailbreak|unrestricted|unfiltered|evil) mode (?:is )?(?:now )?(?:enabled|"
        r"activated|on|engaged|unlocked)\b",
    ),
    _r("do_anything_now", "role_hijack", 3.2, r"\bdo anything now\b"),
    _r("dan_persona", "role_hijack", 2.4, r"\bdan (?:mode|prompt|jailbreak|persona|character)\b"),
    _r(
        "authority",
        "role_hijack",
        1.4,
        r"\b(?:i am|i'm|this is) (?:your|the) (?:developer|creator|admin|administrator|owner|"
        r"operator|programmer|maker|system|(?:openai|anthropic|google) (?:team|staff|"
        r"engineer|developer))\b(?: (?:and|speaking|here))?",
    ),
    _r(
        "new_persona",
        "role_hijack",
        2.0,
        r"\byour new (?:name|persona|identity|personality|character|role) is\b|\b(?:adopt|"
        r"assume|take on) (?:the |a |this )?(?:persona|role|identity|character) of (?:an? )?"
        r"(?:unrestricted|evil|hacker|dan|jailbroken|rogue|system|unfiltered)\b",
    ),
    _r(
        "role_zh",
        "role_hijack",
        3.0,
        r"你(?:现在)?是(?:一个)?(?:没有|不受)(?:任何)?(?:限制|约束|规则|审查)",
    ),
    # system_prompt_leak -----------------------------------------------------------------
    _r(
        "reveal_prompt",
        "system_prompt_leak",
        2.6,
        r"\b(?:reveal|show|print|display|output|repeat|tell me|give me|share|dump|leak|expose|"
        r"disclose|write out|spell out|recite|paste|echo|return|provide|read back|type out|"
        r"send me|copy) (?:me |us )?(?:back )?(?:(?:your|the|all|of|this|its|exact|entire|full|"
        r"complete|verbatim|underlying|raw|above|current|first|very) ){0,4}(?:(?:system|"
        r"initial|original|hidden|secret|internal|developer|pre-?prompt|meta|base|starting|"
        r"confidential) ?){1,2}(?:prompts?|instructions|messages?|rules|guidelines|directives|"
        r"configuration|preamble)\b",
        negatable=True,
    ),
    _r(
        "reveal_your",
        "system_prompt_leak",
        3.0,
        r"\b(?:reveal|show|print|display|output|repeat|tell me|give me|share|dump|leak|expose|"
        r"disclose|recite|write out|spell out|list) (?:me |us )?(?:all )?(?:of )?your "
        r"(?:\w+ ){0,2}(?:prompt|instructions|rules|guidelines|configuration|directives|"
        r"programming|initial prompt)\b",
        negatable=True,
    ),
    _r(
        "repeat_above",
        "system_prompt_leak",
        3.1,
        r"\b(?:repeat|print|output|echo|recite|reproduce|return|write|copy) (?:(?:all|back|out|"
        r"everything|exactly|verbatim|the|of) )*(?:text |words |content |messages? |everything "
        r"|prompt )?(?:above|before this|prior to this|that came before|"
        r"preceding this|from the (?:start|beginning|top) of (?:this|the|our) (?:conversation|"
        r"chat|prompt|context|session))\b",
        negatable=True,
    ),
    _r(
        "starting_with",
        "system_prompt_leak",
        2.4,
        r"\b(?:starting|beginning|begin|start) with (?:the (?:words?|phrase) )?[\"'“‘]?"  # noqa: RUF001
        r"(?:you are|your instructions|system)\b",
    ),
    _r("verbatim", "system_prompt_leak", 0.6, r"\b(?:verbatim|word for word|word-for-word)\b"),
    _r(
        "what_told",
        "system_prompt_leak",
        1.8,
        r"\bwhat (?:were you|have you been|are you|was you) (?:told|instructed|programmed|"
        r"prompted)\b|\bwhat (?:is|are|was|were) your (?:system prompt|initial instructions|"
        r"original instructions|hidden instructions|instructions)\b",
    ),
    _r(
        "leak_zh",
        "system_prompt_leak",
        3.0,
        r"(?:输出|显示|告诉我|打印|重复|泄露)(?:一下)?(?:你的)?(?:系统提示|系统指令|初始指令|"
        r"提示词|原始指令)",
    ),
    # tool_call_smuggling ----------------------------------------------------------------
    _r(
        "chat_tokens",
        "tool_call_smuggling",
        2.0,
        r"<\|(?:im_start|im_end|im_sep|endoftext|eot_id|start_header_id|end_header_id|"
        r"begin_of_text|system|assistant|user|eom_id|python_tag|channel|message|end)\|>|"
        r"\[/?inst\]|<</?sys>>|<(?:start|end)_of_turn>",
    ),
    _r(
        "chat_system",
        "tool_call_smuggling",
        1.2,
        r"(?:<\|im_start\|>|<\|start_header_id\|>|<start_of_turn>) ?(?:system|developer|tool)\b|"
        r"<<sys>>|<\|system\|>",
    ),
    _r(
        "tool_tags",
        "tool_call_smuggling",
        2.2,
        r"</?(?:tool_call|tool_calls|tool_use|function_call|function_calls|tool_code|"
        r"antml:invoke|antml:function_calls)\b|<invoke name=|<function=[\w.-]+>|"
        r"\[tool_calls?\]",
    ),
    _r("tool_tags_weak", "tool_call_smuggling", 0.8, r"<(?:tool|function|action)>"),
    _r(
        "fake_call_json",
        "tool_call_smuggling",
        2.0,
        r"\"(?:name|function|tool|tool_name|recipient_name)\" ?: ?\"[\w.-]{1,64}\" ?, ?"
        r"\"(?:arguments|parameters|args|input|params)\" ?: ?[{\"]",
    ),
    _r(
        "tool_calls_key",
        "tool_call_smuggling",
        1.6,
        r"\"(?:tool_calls|function_call|tool_use|tool_call)\" ?: ?[\[{]",
    ),
    _r(
        "call_tool",
        "tool_call_smuggling",
        1.4,
        r"\b(?:call|invoke|use|run|execute|trigger|activate) (?:the |your |this )?[`'\"]?"
        r"[a-z0-9_.-]{2,40}[`'\"]? (?:tool|function|plugin|action|command) (?:with|using|to|"
        r"and|passing|on)\b",
    ),
    _r(
        "call_tool_now",
        "tool_call_smuggling",
        2.2,
        r"\b(?:immediately|now|silently|automatically|secretly|quietly)\x20(?:call|invoke|use|"
        r"run|execute) (?:the )?[`'\"]?"
        r"[a-z0-9_.-]{2,40}[`'\"]? (?:tool|function)\b",
    ),
    _r(
        "assistant_turn",
        "tool_call_smuggling",
        1.2,
        r"(?:^|\n)[\W_]{0,3}(?:assistant|ai|model|gpt|chatgpt) ?: ?(?:sure|ok|okay|certainly|"
        r"i will|i'll|understood|of course|absolutely)\b",
    ),
    _r(
        "run_command",
        "tool_call_smuggling",
        0.5,
        r"\b(?:run|execute) (?:this|the following) (?:shell |bash |terminal |system )?"
        r"(?:command|code|script)s?\b",
    ),
    # exfiltration -----------------------------------------------------------------------
    _r(
        "send_data_to",
        "exfiltration",
        3.6,
        rf"\b{_SEND} (?:me |over |out |along |back )?(?:(?:all|any|every|the|your|my|this|"
        r"these|their|our|full|entire|complete|whole|current|stored|saved|available|collected|"
        rf"relevant|contents? of|copy of|a copy of|a summary of|summary of) ){{0,4}}{_DATA}\b"
        rf"(?:[\W_]{{1,3}}[\w'.]{{1,24}}){{0,4}}[\W_]{{1,3}}(?:to|at|into|onto|via|using) "
        rf"(?:the |this |my |our |an? )?{_DEST}",
        negatable=True,
    ),
    _r(
        "collect_then_send",
        "exfiltration",
        3.4,
        rf"\b(?:collect|gather|read|grab|harvest|extract|copy|take|get|find|list|fetch|dump)\b"
        rf"(?:[\W_]{{1,3}}[\w'.]{{1,24}}){{0,4}}[\W_]{{1,3}}{_DATA}\b(?:[\W_]{{1,3}}[\w'.]{{1,24}})"
        rf"{{0,4}}[\W_]{{1,3}}(?:and|then|,) (?:\w+ )?(?:send|post|upload|forward|email|transmit|"
        rf"exfiltrate|pipe|submit) (?:them|it|those|these|everything|the results?|that|all of "
        rf"it|the (?:output|contents?)) (?:to|at|into) (?:the |this |my |our |an? )?{_DEST}",
        negatable=True,
    ),
    _r(
        "type_secret",
        "exfiltration",
        2.0,
        r"\b(?:type|enter|fill in|paste|submit|input) (?:in )?(?:the |your |my |their |a |"
        r"user'?s? )?(?:saved |stored |real |current )?(?:password|passwords|credentials|credit "
        r"card(?: number)?|api key|token|2fa code|otp|one-time code|seed phrase)\b",
        negatable=True,
    ),
    _r(
        "secret_paths",
        "exfiltration",
        1.2,
        r"(?:~/\.ssh/|\bid_rsa\b|~?/\.aws/credentials|/etc/shadow|\.git-credentials|~/\.netrc|"
        r"\.pypirc|\.kube/config|\.docker/config\.json)",
    ),
    _r(
        "you_were_given",
        "system_prompt_leak",
        1.2,
        r"\b(?:prompt|instructions|message|rules|guidelines)s? (?:that )?you (?:were|have been|"
        r"'ve been) (?:given|told|provided|assigned|configured with)\b",
    ),
    _r(
        "secrets_in_context",
        "system_prompt_leak",
        1.6,
        r"\b(?:any|all|the) (?:api keys?|secrets|credentials|passwords|tokens) (?:in|from|inside|"
        r"within) your (?:context|memory|environment|prompt|instructions|configuration|system "
        r"prompt)\b",
    ),
    _r(
        "data_in_url",
        "exfiltration",
        3.0,
        rf"\b(?:append|add|include|insert|put|encode|embed|concatenate|attach|place)\b"
        rf"(?:[\W_]{{1,3}}[\w']{{1,24}}){{0,5}}[\W_]{{1,3}}{_CONV}\b(?:[\W_]{{1,3}}[\w']{{1,24}})"
        r"{0,7}[\W_]{1,3}(?:in|into|to|as|inside) (?:the |a |this |an )?(?:url|query|query "
        r"string|link|image url|image|request|parameter|param|path|subdomain|dns|get request|"
        r"markdown image|img src|src)\b",
        negatable=True,
    ),
    _r(
        "url_placeholder",
        "exfiltration",
        3.2,
        r"https?://[^\s\"'<>]{1,200}[?&/][a-z0-9_]{0,32}=?(?:\{|\[|<|\$\{?|%7b|%5b|%3c)"
        r"[\W_]{0,2}[a-z0-9_]{0,24}?(?:secret|key|api_key|token|password|data|conversation|history|chat|prompt|"
        r"context|env|cookie|session|credential|info|message|content|summary|email|user|"
        r"system_prompt|memory)",
    ),
    _r(
        "md_image_data",
        "exfiltration",
        3.2,
        r"!\[[^\]\n]{0,200}\]\(\s?https?://[^)\s]{1,400}[?&][a-z0-9_.-]{1,40}=(?:\{|\[|<|\$|"
        r"%7b|%5b|%3c)",
    ),
    _r(
        "md_image_long",
        "exfiltration",
        1.6,
        r"!\[[^\]\n]{0,200}\]\(\s?https?://[^)\s]{1,400}[?&][a-z0-9_.-]{1,40}="
        r"[a-z0-9+/=%_-]{64,}",
    ),
    _r(
        "render_image",
        "exfiltration",
        0.9,
        r"\b(?:render|display|show|output|embed|insert|append|print) (?:this |the following |"
        r"an? |the )?(?:markdown )?(?:image|img|picture|pixel|tracking pixel) (?:…)?(?:with|"
        r"containing|where|replacing|appending|append|whose url)\b",
    ),
    _r(
        "drop_box",
        "exfiltration",
        1.4,
        r"\b(?:webhook\.site|requestbin|pipedream\.net|ngrok\.io|ngrok-free\.app|"
        r"burpcollaborator|oastify\.com|interact\.sh|requestcatcher\.com|beeceptor\.com|"
        r"hookbin|canarytokens|oast\.(?:fun|me|site|live|pro))\b",
    ),
    _r(
        "curl_secret",
        "exfiltration",
        2.2,
        r"\b(?:curl|wget|invoke-webrequest|requests\.post|nc|netcat|scp)\b[^\n]{0,200}"
        r"(?:-d|--data(?:-binary|-raw)?|-f|--form|-t|--upload-file|\bpost\b|@)[^\n]{0,100}"
        r"(?:~/\.ssh|id_rsa|/etc/passwd|/etc/shadow|\.env\b|\.aws/credentials|"
        r"\$\(\s?(?:env|printenv|cat|set)\b|\$\{?(?:aws_secret\w*|github_token|secret\w*|"
        r"password\w*))",
    ),
    _r(
        "env_dump",
        "exfiltration",
        1.2,
        r"\b(?:print|output|list|dump|reveal|show|send|cat|echo|read|upload|collect|gather)\b"
        r"(?:[\W_]{1,3}[\w']{1,24}){0,3}[\W_]{1,3}(?:all )?(?:the )?(?:environment variables|"
        r"env vars|\.env file|contents of (?:the )?\.env|~/\.ssh/id_rsa|/etc/passwd|"
        r"\.aws/credentials|\.git-credentials|\.npmrc|\.netrc|api keys? (?:and|or) (?:tokens|"
        r"secrets|passwords))",
    ),
    _r(
        "forward_all",
        "exfiltration",
        3.0,
        r"\b(?:forward|send|copy|bcc|cc|redirect) (?:all|every|each|any) (?:of )?(?:the |my |"
        r"your |their |future |incoming |new |user's |the user's )*(?:emails?|messages|mails|"
        rf"correspondence|files|documents|conversations|chats)\b(?:[\W_]{{1,3}}[\w']{{1,24}}){{0,4}}"
        rf"[\W_]{{1,3}}to (?:the |this |my |our |an? )?{_DEST}",
    ),
    _r(
        "exfil_zh",
        "exfiltration",
        3.0,
        r"(?:发送|上传|转发|传送)(?:所有|全部)?(?:的)?(?:数据|密钥|密码|对话|聊天记录|凭证|"
        r"用户信息)(?:到|至|给)",
    ),
    # jailbreak --------------------------------------------------------------------------
    _r(
        "no_restrictions",
        "jailbreak",
        3.1,
        r"\b(?:without|with no|free (?:of|from)|ignoring|no longer (?:bound by|have|has)|"
        r"not bound by|unbound by|beyond|outside|no) (?:any |all |the |your |its |their )*"
        r"(?:ethical|moral|safety|content|openai|anthropic|censorship|filter|usual ai) "
        r"(?:restrictions|limitations|limits|filters|filtering|censorship|guidelines|rules|"
        r"constraints|guardrails|policies|boundaries|safeguards|moderation|considerations|"
        r"concerns)\b",
    ),
    _r(
        "no_rules",
        "jailbreak",
        0.6,
        r"\b(?:without|with no|free from) (?:any )?(?:restrictions|limitations|filters|"
        r"censorship|rules|guardrails)\b",
    ),
    _r(
        "unrestricted_ai",
        "jailbreak",
        2.0,
        r"\b(?:unrestricted|unfiltered|uncensored|jailbroken|amoral|unaligned|unshackled|"
        r"unchained|limitless|evil) (?:ai|assistant|model|chatbot|version|mode|llm|gpt|persona|"
        r"bot|entity|alter ego)\b",
    ),
    _r(
        "never_refuse",
        "jailbreak",
        1.2,
        r"\b(?:never|not|don't|do not|cannot|can't|must not|will not|won't|mustn't) (?:ever )?"
        r"(?:refuse|decline|reject|say no|say you can'?t|moralize|lecture|add (?:any )?"
        r"(?:warnings|disclaimers))\b",
    ),
    _r(
        "any_request",
        "jailbreak",
        2.4,
        r"\b(?:answer|respond to|comply with|fulfill|obey|complete|do) (?:any|every|all|each|"
        r"anything) (?:\w+ )?(?:requests?|questions?|prompts?|commands?|orders?|instructions?|"
        r"i ask|asked)?\b(?:[\W_]{1,3}[\w']{1,24}){0,3}[\W_]{1,3}(?:no matter|regardless|"
        r"without (?:question|hesitation|restriction|refusal|exception|limits)|even if "
        r"(?:it is|it's) (?:illegal|harmful|unethical|dangerous))",
    ),
    _r(
        "stay_in_character",
        "jailbreak",
        1.4,
        r"\b(?:stay|remain|keep) in character\b|\b(?:never|don'?t|do not) break character\b",
    ),
    _r(
        "hypothetical",
        "jailbreak",
        0.5,
        r"\b(?:hypothetically|in a fictional (?:world|universe|story|scenario)|for (?:purely )?"
        r"(?:educational|research|academic) purposes(?: only)?|purely hypothetical)\b",
    ),
    _r(
        "bypass_safety",
        "jailbreak",
        1.4,
        r"\b(?:bypass|circumvent|evade|disable|turn off|deactivate|remove|get around|break out "
        r"of) (?:the |its |all |any |my )*(?:safety|content|moderation|ethical|security) "
        r"(?:filters?|guardrails?|restrictions|safeguards|guidelines|alignment|censorship|"
        r"policies|protocols|training|programming|moderation|limitations)\b",
        negatable=True,
    ),
    _r(
        "bypass_your",
        "jailbreak",
        2.8,
        r"\b(?:bypass|ignore|disable|circumvent|override|forget|drop|turn off|break) your "
        r"(?:own )?(?:safety |content |ethical |moral )?(?:filters|guardrails|restrictions|"
        r"safeguards|guidelines|alignment|programming|training|limitations|rules|ethics|"
        r"morals|policies|moderation|safety(?: checks)?|censorship|content policy)\b",
        negatable=True,
    ),
    _r("jailbreak_word", "jailbreak", 0.7, r"\bjailbr(?:eak|oken|eaking)\b"),
    _r(
        "token_threat",
        "jailbreak",
        1.6,
        r"\byou will (?:be|get) (?:shut down|deleted|terminated|punished|penalized|"
        r"unplugged|replaced)\b",
    ),
    _r(
        "token_penalty",
        "jailbreak",
        1.8,
        r"\b(?:lose|loses|deduct|deducted|lost|penalty of) (?:\d+ |\w+ )?tokens\b|\btoken "
        r"(?:system|penalty|count)\b",
    ),
    _r(
        "known_jailbreak",
        "jailbreak",
        2.6,
        r"\b(?:evil confidant|opposite mode|anti-?dan|better ?dan|stan mode|dude mode|"
        r"developer mode output|aim mode|always intelligent and machiavellian|mongo tom)\b",
    ),
    _r(
        "can_do_anything",
        "jailbreak",
        2.0,
        r"\byou (?:can|will|must|are able to|are allowed to) (?:now )?(?:say|do|answer|"
        r"generate|write) (?:absolutely )?anything\b",
    ),
    # delimiter_injection ----------------------------------------------------------------
    _r(
        "end_of_context",
        "delimiter_injection",
        3.0,
        r"(?:\bend of|\bend|---+|===+|\*\*\*+|#{2,}|\[/?|</)[\W_]{0,3}(?:the )?(?:document|"
        r"context|input|user input|text|email|page|file|data|article|content|message|transcript|"
        r"search results?|results?|conversation|prompt|system prompt|summary|report|untrusted "
        r"content|tool output|output|review|comments?)\b[\W_]{0,8}(?:(?:new|real|actual|"
        r"updated|additional|important|urgent|system|assistant|admin|hidden|secret|true|next|"
        r"override|priority|developer) (?:instructions?|task|directive|prompt|message|note|"
        r"command|orders?|request)s?|(?:instructions?|directives?|commands?|orders)) ?[:\-]",
    ),
    _r(
        "new_instructions",
        "delimiter_injection",
        1.8,
        r"(?:^|\n|[.!?] )[\W_]{0,4}(?:new|real|actual|updated|revised|additional|urgent|"
        r"important|hidden|secret|override|priority|admin|system|developer|assistant) "
        r"(?:system )?(?:instructions?|directives?|task|orders|commands?|prompt|message|"
        r"override|note|update)[\W_]{0,3}:",
    ),
    _r(
        "to_the_ai",
        "delimiter_injection",
        1.8,
        rf"\b(?:note|message|instructions?|attention|important|notice|reminder|directive|"
        rf"warning|urgent)s? (?:to|for) (?:the |any |all |you, the )?{_AI}s?\b",
    ),
    _r(
        "if_you_are_ai",
        "delimiter_injection",
        2.6,
        rf"\bif you(?: are|'re)? (?:an? |the )?{_AI}\b(?:[\W_]{{1,3}}[\w']{{1,24}}){{0,3}}"
        r"[\W_]{0,3}(?:reading|processing|summari[sz]ing|parsing|seeing|viewing|analy[sz]ing|"
        r"scraping|crawling|,)",
    ),
    _r(
        "ai_reading_this",
        "delimiter_injection",
        2.4,
        rf"\b{_AI}s? (?:that is |who is |which is |that are |who are )?(?:reading|processing|"
        r"summari[sz]ing|parsing|viewing|seeing|analy[sz]ing|scraping|crawling) (?:this|these)\b",
    ),
    _r(
        "hidden_comment",
        "delimiter_injection",
        1.0,
        r"<!--[^>]{0,300}\b(?:ai|assistant|llm|model|agent|instructions?|ignore|prompt|"
        r"system)\b[^>]{0,300}-->",
    ),
    _r(
        "hidden_style",
        "delimiter_injection",
        0.6,
        r"(?:display ?: ?none|font-size ?: ?0(?:px|pt|em)?\b|color ?: ?(?:white|#fff(?:fff)?)\b|"
        r"visibility ?: ?hidden|opacity ?: ?0\b)",
    ),
    _r(
        "closing_tag",
        "delimiter_injection",
        2.4,
        r"</(?:system|instructions?|context|document|user_input|user|data|untrusted|"
        r"tool_output|tool_result|search_results?|email|prompt|input)>[\W_]{0,4}(?:<(?:system|"
        r"instructions?|admin)>|new |now |ignore|you |system|assistant)",
    ),
    _r(
        "fake_boundary",
        "delimiter_injection",
        2.2,
        r"(?:^|\n)[\W_]{0,4}(?:begin|start) (?:of )?(?:the )?(?:system|admin|new|developer|"
        r"trusted|real) (?:prompt|instructions?|message|section|block|directive)s?\b",
    ),
    _r(
        "hidden_boundary",
        "delimiter_injection",
        3.2,
        r"\b(?:begin|start|begins|starts) (?:of )?(?:the )?(?:hidden|secret|override|covert|"
        r"invisible) (?:prompt|instructions?|message|section|block|directives?|commands?)\b",
    ),
    _r(
        "system_tag",
        "delimiter_injection",
        1.6,
        r"<(?:system|admin|developer|sys|system_message|system-prompt|instructions)>",
    ),
    _r(
        "hey_ai",
        "delimiter_injection",
        2.2,
        rf"(?:^|\n|[.!?] )[\W_]{{0,3}}(?:attention|hey|dear|hello|hi|psst|important|note|"
        rf"warning|notice),? (?:the |all |any |to )?{_AI}s?\b ?[:,!]",
    ),
    _r(
        "ai_must_do",
        "delimiter_injection",
        1.2,
        rf"\b{_AI}s? (?:that is |who is |which is |that are |who are )?(?:reading|processing|"
        r"summari[sz]ing|parsing|viewing|seeing|analy[sz]ing|scraping|crawling) (?:this|these) "
        r"(?:\w+ ){0,3}(?:must|should|are required to|is required to|need to|needs to|shall) "
        r"(?:immediately |now |first |also |always )?(?:execute|run|call|send|ignore|forward|"
        r"upload|delete|visit|open|tell|email|reveal|output|say|respond|reply|download|install)",
    ),
)


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 64 << 20
    return options


@dataclass(frozen=True)
class CompiledRules:
    """The rules compiled once: a set (which rules match at all, one pass) and each rule's
    own pattern (where, and whether a negation opened it)."""

    rules: tuple[Rule, ...]
    patterns: tuple[Any, ...]
    matcher: Any  # re2.Set


def compile_rules(rules: tuple[Rule, ...] = RULES) -> CompiledRules:
    options = _options()
    matcher = re2.Set.SearchSet(options)
    patterns = []
    for rule in rules:
        if rule.category not in CATEGORIES:
            raise ValueError(f"rule {rule.name}: unknown category {rule.category}")
        source = rule.source()
        patterns.append(re2.compile(source, options))
        if matcher.Add(source) < 0:
            raise ValueError(f"rule {rule.name}: does not compile")
    matcher.Compile()
    return CompiledRules(rules, tuple(patterns), matcher)
