"""The legal demo department's contract clauses and how its rows are written; see make_datasets.py.

A clause is one *group* of rows: its text, summary and risk appear only on its own side of the
train/held-out split. Each clause type has three clauses, and a held-out clause leaves at least
two of its type in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .data import InstructionRow


@dataclass(frozen=True)
class Clause:
    name: str
    text: str
    summary: str
    risk: str  # low | medium | high
    reason: str


# fmt: off
CLAUSES = (
    Clause("confidentiality",
           "Each party shall keep the other party's Confidential Information secret for five (5) years "
           "after termination and use it only to perform this Agreement.",
           "Both parties must keep each other's confidential information secret for five years after the "
           "contract ends.",
           "low", "mutual and time-limited obligation"),
    Clause("confidentiality",
           "The Recipient shall keep all information disclosed by the Discloser confidential in "
           "perpetuity, including information that is already public.",
           "We must keep all disclosed information confidential forever, even information that is public.",
           "high", "unlimited duration and no exclusion for public information"),
    Clause("confidentiality",
           "The Recipient may disclose Confidential Information to its employees and advisers who need to "
           "know it and are bound by equivalent duties of confidence.",
           "We may share confidential information with staff and advisers who need it and are bound by "
           "confidentiality.",
           "low", "a standard need-to-know exception"),
    Clause("limitation of liability",
           "Each party's aggregate liability under this Agreement shall not exceed the fees paid in the "
           "twelve (12) months preceding the claim.",
           "Each party's total liability is capped at the fees paid in the last twelve months.",
           "medium", "a market-standard cap that may not cover a large loss"),
    Clause("limitation of liability",
           "The Supplier's total liability for all claims shall not exceed one thousand euros (EUR "
           "1,000).",
           "The supplier's liability for all claims is capped at EUR 1,000.",
           "high", "the cap is far below any realistic damage"),
    Clause("limitation of liability",
           "Nothing in this Agreement limits either party's liability for death, personal injury, fraud "
           "or breach of confidentiality.",
           "Liability for death, personal injury, fraud and confidentiality breaches is not limited.",
           "low", "standard carve-outs that protect both parties"),
    Clause("termination",
           "Either party may terminate this Agreement for convenience on ninety (90) days' written "
           "notice.",
           "Either party may end the contract without cause on 90 days' written notice.",
           "low", "mutual right with a reasonable notice period"),
    Clause("termination",
           "The Supplier may terminate this Agreement at any time with immediate effect and without "
           "giving reasons.",
           "The supplier may end the contract at any time, immediately and without reason.",
           "high", "one-sided right that could cut off a service we rely on"),
    Clause("termination",
           "Either party may terminate this Agreement if the other commits a material breach that is not "
           "remedied within thirty (30) days of written notice.",
           "Either party may terminate for a material breach not fixed within 30 days of notice.",
           "low", "mutual right with a cure period"),
    Clause("indemnity",
           "The Customer shall indemnify the Supplier against all losses, claims and costs of any kind "
           "arising out of or in connection with this Agreement.",
           "We must cover all of the supplier's losses and claims connected with the contract.",
           "high", "an unlimited indemnity not tied to our own fault"),
    Clause("indemnity",
           "The Supplier shall indemnify the Customer against third-party claims that the Services "
           "infringe any intellectual property right.",
           "The supplier covers us against third-party claims that its services infringe IP rights.",
           "low", "the indemnity protects us"),
    Clause("indemnity",
           "Each party shall indemnify the other against losses caused by its own negligence or wilful "
           "misconduct, subject to the liability cap.",
           "Each party covers the other's losses caused by its own negligence or misconduct, within the "
           "cap.",
           "medium", "mutual and capped but still a financial exposure"),
    Clause("governing law",
           "This Agreement is governed by the laws of England and Wales, and the courts of London have "
           "exclusive jurisdiction.",
           "English law applies and disputes go exclusively to the London courts.",
           "low", "a well-known and neutral legal system"),
    Clause("governing law",
           "This Agreement is governed by the laws of the Supplier's country of incorporation, as the "
           "Supplier may designate from time to time.",
           "The law of the supplier's country applies, and the supplier can change which country that is.",
           "high", "the governing law is uncertain and chosen by the other side"),
    Clause("governing law",
           "Any dispute shall be settled by arbitration in Geneva under the Swiss Rules, in English.",
           "Disputes go to arbitration in Geneva under the Swiss Rules, in English.",
           "medium", "arbitration is private but can be costly"),
    Clause("data processing",
           "The Processor shall process Personal Data only on the Controller's documented instructions "
           "and shall notify any Personal Data Breach without undue delay.",
           "The processor handles personal data only on our instructions and reports breaches promptly.",
           "low", "matches the usual GDPR processor terms"),
    Clause("data processing",
           "The Supplier may transfer Personal Data to any country and appoint sub-processors without "
           "notice to the Customer.",
           "The supplier may send personal data anywhere and use sub-processors without telling us.",
           "high", "uncontrolled transfers and sub-processing breach data protection law"),
    Clause("data processing",
           "The Supplier shall delete or return all Personal Data within sixty (60) days after the end of "
           "the Services, at the Customer's choice.",
           "The supplier must delete or return all personal data within 60 days after the service ends.",
           "low", "clear end-of-contract handling of personal data"),
    Clause("payment terms",
           "Invoices are payable within thirty (30) days of receipt; late payments bear interest at four "
           "percent (4%) above the base rate.",
           "Invoices are due within 30 days, with interest of 4% above base rate on late payment.",
           "low", "standard payment terms"),
    Clause("payment terms",
           "The Supplier may increase its fees at any time by written notice, effective immediately.",
           "The supplier can raise its prices at any time with immediate effect.",
           "high", "unlimited and immediate price increases"),
    Clause("payment terms",
           "Fees are payable annually in advance and are non-refundable, including on early termination.",
           "Fees are paid yearly in advance and are not refunded, even if the contract ends early.",
           "medium", "prepaid fees are lost if we terminate early"),
    Clause("intellectual property",
           "All intellectual property created by the Supplier in performing the Services shall vest in "
           "the Customer on payment.",
           "We own all intellectual property the supplier creates for us once we have paid.",
           "low", "ownership passes to us"),
    Clause("intellectual property",
           "The Supplier retains all rights in the deliverables and grants the Customer a revocable "
           "licence to use them.",
           "The supplier keeps ownership of the deliverables and gives us a licence it can revoke.",
           "high", "we could lose the right to use work we paid for"),
    Clause("intellectual property",
           "Each party retains its pre-existing intellectual property; the Customer receives a perpetual "
           "licence to the Supplier's tools embedded in the deliverables.",
           "Each party keeps its existing IP, and we get a permanent licence to tools inside the "
           "deliverables.",
           "low", "a perpetual licence secures our use"),
    Clause("non-compete",
           "For three (3) years after termination the Customer shall not engage any other provider of "
           "similar services anywhere in the world.",
           "For three years after the contract ends we may not use any similar provider worldwide.",
           "high", "long, worldwide restriction on our choice of suppliers"),
    Clause("non-compete",
           "During the term neither party shall solicit the other's employees who worked on the Services.",
           "While the contract runs, neither party may poach the other's staff who worked on the "
           "services.",
           "low", "mutual, limited to the term and to project staff"),
    Clause("non-compete",
           "For twelve (12) months after termination the Customer shall not hire any of the Supplier's "
           "staff without paying a fee equal to one year's salary.",
           "For 12 months after the contract we must pay a year's salary to hire any of the supplier's "
           "staff.",
           "medium", "a costly but time-limited hiring restriction"),
    Clause("auto-renewal",
           "This Agreement renews automatically for successive one-year terms unless either party gives "
           "ninety (90) days' notice before the end of the current term.",
           "The contract renews every year unless either party gives 90 days' notice before the term "
           "ends.",
           "medium", "missing the notice window locks us in for another year"),
    Clause("auto-renewal",
           "This Agreement ends at the end of the Initial Term unless the parties agree in writing to "
           "renew it.",
           "The contract ends after the initial term unless both parties agree in writing to renew.",
           "low", "no automatic lock-in"),
    Clause("auto-renewal",
           "This Agreement renews automatically for five-year terms, and may not be terminated during a "
           "renewal term.",
           "The contract renews automatically for five years at a time and cannot be ended during a "
           "renewal.",
           "high", "long renewal terms with no exit"),
    Clause("warranty",
           "The Supplier warrants that the Services will be performed with reasonable skill and care and "
           "will materially conform to the Documentation.",
           "The supplier promises to perform with reasonable skill and care and to match the "
           "documentation.",
           "low", "a standard service warranty"),
    Clause("warranty",
           "The Services are provided 'as is' and the Supplier disclaims all warranties, express or "
           "implied.",
           "The services come as is, with no warranties of any kind.",
           "high", "we have no remedy if the services do not work"),
    Clause("warranty",
           "The Supplier warrants the Software for ninety (90) days; the sole remedy is repair or "
           "replacement.",
           "The software is warranted for 90 days, and the only remedy is repair or replacement.",
           "medium", "short warranty with a limited remedy"),
    Clause("assignment",
           "Neither party may assign this Agreement without the other party's prior written consent, not "
           "to be unreasonably withheld.",
           "Neither party may transfer the contract without the other's consent, which cannot be "
           "unreasonably refused.",
           "low", "balanced control over transfers"),
    Clause("assignment",
           "The Supplier may assign or subcontract any of its obligations to any third party without the "
           "Customer's consent.",
           "The supplier may hand over or subcontract its obligations to anyone without our consent.",
           "high", "we could end up with an unknown provider"),
    Clause("assignment",
           "Either party may assign this Agreement to an affiliate or to a successor in a merger, on "
           "written notice.",
           "Either party may transfer the contract to an affiliate or a merger successor by giving "
           "notice.",
           "medium", "the counterparty may change through a corporate deal"),
)
# fmt: on


# --- rows ----------------------------------------------------------------------------------------

COUNTERPARTIES = (
    "Acme Cloud Ltd", "Birchwood Analytics", "Cobalt Logistics", "Delta Print GmbH", "Evergreen Foods",
    "Falcon Security", "Granite Software", "Harbor Health", "Ion Energy", "Juniper Media",
    "Kestrel Payments", "Lumen Robotics", "Meridian Bank", "Northwind Traders", "Orchid Labs",
    "Pinnacle Consulting", "Quartz Telecom", "Riverside Hotels", "Summit Staffing", "Tidal Data",
)  # fmt: skip
CONTRACTS = (
    "software licence", "cloud services agreement", "consulting agreement", "supply agreement", "NDA",
    "data processing agreement", "master services agreement", "reseller agreement",
)  # fmt: skip
LEGAL_ASKS = (
    (
        "Summarize this {clause} clause from our {contract} with {party} and rate the risk for us.",
        "summarization",
    ),
    ("We are negotiating a {contract} with {party}. Review the {clause} clause below.", "summarization"),
    (
        "What does this {clause} clause in the {party} {contract} mean for us, and how risky is it?",
        "closed_qa",
    ),
    ("Classify the risk of the {clause} clause in our {contract} with {party}.", "classification"),
    (
        "Extract the key obligation from the {clause} clause of the {party} {contract} and assess its risk.",
        "information_extraction",
    ),
    ("Legal review request: {clause} clause, {contract}, counterparty {party}.", "summarization"),
)
# Asked only of held-out clauses: the held-out rows also test phrasings never trained on.
HELD_OUT_ASKS = (
    ("{party} sent us a {contract}. Is the {clause} clause below acceptable for us?", "closed_qa"),
    ("Give me a short risk note on the {clause} clause in the {contract} from {party}.", "summarization"),
)


def legal_row(rng: random.Random, clause: Clause, group: str, held_out: bool) -> InstructionRow:
    template, category = rng.choice(LEGAL_ASKS + HELD_OUT_ASKS if held_out else LEGAL_ASKS)
    instruction = template.format(
        clause=clause.name, contract=rng.choice(CONTRACTS), party=rng.choice(COUNTERPARTIES)
    )
    response = f"SUMMARY: {clause.summary}\nRISK: {clause.risk} - {clause.reason}"
    expected = {"risk": clause.risk, "clause_type": clause.name}
    return InstructionRow(instruction, clause.text, response, category, group, expected)


# The legal team's preference: the risk line ends with what to do. Several wordings per level, so
# that no one suffix defines the preferred answer; the last wording of each level appears only in
# the held-out pairs.
LEGAL_ACTIONS = {
    "low": ("no action needed", "fine to sign as it stands", "nothing to negotiate here", "safe to accept"),
    "medium": (
        "accept with a note to the contract owner",
        "acceptable, but flag it to the contract owner",
        "sign only after the business owner agrees to the exposure",
        "tell the contract owner before accepting",
    ),
    "high": (
        "negotiate before signing",
        "do not sign without changing this clause",
        "push back and propose a balanced version",
        "ask for this clause to be removed or rewritten",
    ),
}


def legal_preferred(row: InstructionRow, rng: random.Random, held_out: bool) -> str:
    """The risk line ends with an action: `; <action>` or `. <Action>.`, in varying words."""
    summary_line, risk_line = row.response.split("\n")
    level = risk_line.removeprefix("RISK: ").split(" - ", 1)[0]
    wordings = LEGAL_ACTIONS[level]
    action = wordings[-1] if held_out else rng.choice(wordings[:-1])
    if rng.random() < 0.5:
        return f"{summary_line}\n{risk_line}; {action}"
    return f"{summary_line}\n{risk_line}. {action[0].upper()}{action[1:]}."


def legal_rejected(row: InstructionRow, rng: random.Random) -> str:
    """A plausible answer to the row that breaks the SUMMARY/RISK format."""
    summary_line, risk_line = row.response.split("\n")
    summary = summary_line.removeprefix("SUMMARY: ")
    level, reason = risk_line.removeprefix("RISK: ").split(" - ", 1)
    variant = rng.randrange(5)
    if variant == 0:  # free prose
        opening = f"In short, {summary[0].lower()}{summary[1:]}"
        return f"{opening} I would see this as {level} risk because of {reason}."
    if variant == 1:  # RISK line missing
        return summary_line
    if variant == 2:  # wrong order
        return f"{risk_line}\n{summary_line}"
    if variant == 3:  # other labels
        return f"Summary: {summary}\nRisk level: {level.capitalize()} ({reason})"
    return f"SUMMARY:\n- {summary}\nRISK: {level}"
