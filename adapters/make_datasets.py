"""Write the demo department data sets (it-helpdesk, legal) from deterministic templates.

    .venv/bin/python -m adapters.make_datasets              # into adapters/datasets/
    .venv/bin/python -m adapters.make_datasets --out /tmp/x

The committed files under adapters/datasets/ are exactly what this writes (a test checks it), so
change the templates here and regenerate rather than editing the JSONL by hand. Everything was
written for this project; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from adapters.data import FORMAT_CHECKS, InstructionRow, PreferencePair, prompt_text, split

DEFAULT_OUT = Path(__file__).resolve().parent / "datasets"
SEED = 6
HELD_OUT_FRACTION = 0.15
ROWS_PER_DEPARTMENT = 300
TRAIN_PREFERENCES = 150

# --- it-helpdesk ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    slug: str
    priority: str  # low | medium | high
    escalate: bool
    questions: tuple[str, ...]
    steps: tuple[str, ...]


# fmt: off
PROBLEMS = (
    Problem("vpn-connection", "medium", False,
            ("I can't connect to the company VPN from home.",
             "The VPN client says 'connection failed' every time I try to connect.",
             "My VPN times out before it ever connects."),
            ("Check that your internet connection works without the VPN.",
             "Quit the VPN client completely and start it again.",
             "Sign in again with your company account and approve the MFA prompt.")),
    Problem("vpn-dropping", "medium", False,
            ("The VPN keeps disconnecting every few minutes.",
             "My VPN connection drops whenever I join a video call.",
             "The VPN disconnects randomly and I lose my remote desktop session."),
            ("Use a wired connection or move closer to your Wi-Fi router.",
             "Update the VPN client from the Software Center.",
             "Reconnect and note the time of each further drop for the ticket.")),
    Problem("password-reset", "low", False,
            ("I forgot my password.",
             "How do I reset my Windows password?",
             "I need to change my password but I don't remember the old one."),
            ("Open the self-service portal at https://password.example.com.",
             "Verify your identity with the code sent to your registered phone.",
             "Choose a new password of at least 14 characters and sign in with it.")),
    Problem("account-locked", "medium", False,
            ("My account is locked after too many login attempts.",
             "Windows says my account has been locked out.",
             "I typed my password wrong a few times and now I'm locked out."),
            ("Wait 15 minutes for the automatic unlock.",
             "Reset your password in the self-service portal if you are unsure of it.",
             "Sign in again; if the account is still locked, reply to this ticket.")),
    Problem("password-expired", "low", False,
            ("My password expired and I can't sign in to email.",
             "I keep getting a message that my password has expired.",
             "Outlook says my password is expired. What now?"),
            ("Sign in to the self-service portal and choose a new password.",
             "Lock and unlock your laptop so it picks up the new password.",
             "Enter the new password on your phone's mail app when it asks.")),
    Problem("printer-offline", "low", False,
            ("The office printer shows as offline.",
             "I can't print, the printer says it's offline.",
             "My print jobs are stuck because the printer is offline."),
            ("Check that the printer is switched on and shows no error on its panel.",
             "Remove the stuck jobs from the print queue on your computer.",
             "Remove the printer and add it again from the printer list.")),
    Problem("printer-jam", "low", False,
            ("The printer on the second floor has a paper jam.",
             "Paper keeps jamming in the printer.",
             "The printer says 'paper jam' but I can't see any paper stuck."),
            ("Switch the printer off and open every tray and door shown on its panel.",
             "Pull out any jammed paper gently in the direction of the paper path.",
             "Close all doors, switch the printer on and print a test page.")),
    Problem("printer-driver", "low", False,
            ("My laptop can't find the printer driver.",
             "Printing gives me garbled characters instead of my document.",
             "The printer isn't in my list of printers after the update."),
            ("Install the printer package from the Software Center.",
             "Restart your laptop.",
             "Add the printer again from the printer list and print a test page.")),
    Problem("laptop-slow", "low", False,
            ("My laptop is very slow.",
             "Everything on my computer takes ages to open.",
             "My laptop fan is loud and apps freeze all the time."),
            ("Restart the laptop; if it has not been restarted for days this often helps.",
             "Close the apps you are not using and check Task Manager for high CPU use.",
             "Install pending updates from the Software Center and restart again.")),
    Problem("laptop-no-boot", "high", True,
            ("My laptop won't turn on.",
             "My laptop shows a black screen when I press the power button.",
             "My computer is stuck on the startup logo and never boots."),
            ("Connect the charger and hold the power button for 20 seconds.",
             "Disconnect the docking station and all USB devices and try again.",
             "Bring the laptop to the IT desk for a loan device while it is repaired.")),
    Problem("laptop-battery", "low", False,
            ("My laptop battery drains in an hour.",
             "The laptop battery doesn't charge past 60 percent.",
             "My laptop dies as soon as I unplug it."),
            ("Check the battery report in the IT support app.",
             "Lower the screen brightness and close heavy apps while on battery.",
             "Book a battery replacement at the IT desk if the report shows wear.")),
    Problem("screen-broken", "medium", True,
            ("I dropped my laptop and the screen is cracked.",
             "My laptop screen flickers and shows coloured lines.",
             "Half of my laptop screen is black."),
            ("Stop using the laptop if glass is loose, to avoid injury.",
             "Back up any files that are not yet in OneDrive.",
             "Bring the laptop to the IT desk for a repair and a loan device.")),
    Problem("email-sync", "medium", False,
            ("My email isn't syncing on my phone.",
             "New emails don't show up in Outlook.",
             "Outlook is stuck on 'updating this folder'."),
            ("Check that you are online and that Outlook shows 'Connected' at the bottom.",
             "Close Outlook and open it again.",
             "Remove and add your mail account again on your phone if it still does not sync.")),
    Problem("mailbox-full", "low", False,
            ("My mailbox is full and I can't send emails.",
             "Outlook says my mailbox is almost full.",
             "I get a warning that I'm over my mailbox quota."),
            ("Empty the Deleted Items and Junk folders.",
             "Move large attachments to OneDrive and delete them from the emails.",
             "Turn on the online archive in Outlook for mail older than one year.")),
    Problem("phishing-report", "high", True,
            ("I clicked a link in a suspicious email.",
             "I think I entered my password on a fake login page.",
             "I got an email asking me to pay an urgent invoice and I opened the attachment."),
            ("Disconnect your computer from the network now.",
             "Change your password from another device in the self-service portal.",
             "Forward the email as an attachment to security@example.com and do not delete it.")),
    Problem("shared-mailbox-access", "low", True,
            ("I need access to the sales shared mailbox.",
             "How do I get access to the team's shared inbox?",
             "Can I be added to the support@ shared mailbox?"),
            ("Ask the mailbox owner to approve your access in the access portal.",
             "Wait for the approval email; access is granted within one working day.",
             "Restart Outlook so the shared mailbox appears in your folder list.")),
    Problem("wifi-connection", "medium", False,
            ("My laptop can't connect to the office Wi-Fi.",
             "The Wi-Fi says 'no internet, secured'.",
             "I can't join the corporate wireless network."),
            ("Turn Wi-Fi off and on again and choose the network 'Corp-WiFi'.",
             "Forget the network and connect again with your company account.",
             "Restart the laptop and try again near a different access point.")),
    Problem("wifi-slow", "low", False,
            ("The Wi-Fi in the meeting room is really slow.",
             "Internet is very slow on my laptop at the office.",
             "Web pages load slowly on the guest Wi-Fi."),
            ("Run a speed test at https://speed.example.com and note the result.",
             "Move closer to an access point or use a network cable at your desk.",
             "Tell us the room or desk number so we can check the access point there.")),
    Problem("software-install", "low", True,
            ("I need Visio installed on my laptop.",
             "Can you install Python on my work computer?",
             "How do I get Adobe Acrobat Pro?"),
            ("Look for the application in the Software Center and install it from there.",
             "If it is not listed, request it in the IT portal with a business reason.",
             "Wait for your manager's approval; the installation then runs automatically.")),
    Problem("software-crash", "medium", False,
            ("Excel crashes every time I open a big file.",
             "Teams keeps closing by itself.",
             "An app freezes and then closes with an error."),
            ("Install pending updates from the Software Center.",
             "Restart the laptop and open the app again.",
             "Run the Repair option for the app in Settings > Apps if it still crashes.")),
    Problem("license-expired", "medium", True,
            ("My software says the license has expired.",
             "Office shows 'unlicensed product' at the top.",
             "I get a license error when I start the design software."),
            ("Sign out of the app and sign in again with your company account.",
             "Restart the laptop so the license is checked again.",
             "Reply to this ticket with a screenshot of the error if it persists.")),
    Problem("mfa-new-phone", "medium", True,
            ("I got a new phone and my authenticator app is gone.",
             "How do I move MFA to my new phone?",
             "I lost my phone and can't approve sign-ins."),
            ("Call the service desk so we can verify your identity.",
             "We reset your MFA registration after the check.",
             "Sign in and register the authenticator app on the new phone.")),
    Problem("mfa-no-prompt", "medium", False,
            ("I'm not getting the MFA push notification.",
             "The authenticator app never shows the approval request.",
             "MFA prompts don't arrive on my phone."),
            ("Open the authenticator app and check that notifications are allowed.",
             "Check that the phone's date and time are set automatically.",
             "Use the six-digit code in the app instead of the push notification.")),
    Problem("file-share-access", "low", True,
            ("I can't open the finance folder on the shared drive.",
             "I get 'access denied' on a network folder.",
             "I need access to the project share on the S: drive."),
            ("Ask the folder owner to approve your access in the access portal.",
             "Sign out and in again after the approval email arrives.",
             "Open the folder again from File Explorer.")),
    Problem("headset-audio", "low", False,
            ("People can't hear me in Teams calls.",
             "My headset microphone doesn't work.",
             "I hear no sound from my headset in meetings."),
            ("Select the headset as microphone and speaker in the app's device settings.",
             "Unplug the headset, plug it into another USB port and try again.",
             "Make a test call to check the microphone and speaker.")),
    Problem("docking-monitor", "low", False,
            ("My external monitor isn't detected through the dock.",
             "The second screen stays black when I dock my laptop.",
             "My docking station stopped working."),
            ("Unplug the dock's power for ten seconds and plug it in again.",
             "Check that the monitor cable is firm and the right input is selected.",
             "Install the dock firmware update from the Software Center.")),
    Problem("device-lost", "high", True,
            ("I left my work laptop on the train.",
             "My work phone was stolen.",
             "I can't find my company laptop after the conference."),
            ("Report the loss to the service desk by phone right away.",
             "We lock and wipe the device remotely.",
             "Change your password and report the theft to the police if it was stolen.")),
)
# fmt: on

GREETINGS = ("", "Hi, ", "Hello, ", "Quick question: ", "Help! ", "Good morning. ")
DETAILS = (
    "",
    " I'm on a Windows laptop.",
    " I'm using a MacBook.",
    " This started after the last update.",
    " It worked fine yesterday.",
    " I'm working from home today.",
    " I already restarted once.",
)
KEEP_CAPITAL = ("I ", "I'", "Windows", "Outlook", "Excel", "Teams", "MFA", "Office", "Paper")
URGENT = (" I have a client meeting in ten minutes.", " I have a deadline this afternoon.")
TEAM_WIDE = (" The whole team has the same problem.", " Everyone on our floor is affected.")
PEOPLE = ("Ana", "Ben", "Chen", "Dara", "Emil", "Farah", "Gus", "Hana", "Ivo", "Jade", "Kofi", "Lena")
TEAMS = ("Sales", "Finance", "HR", "Marketing", "Engineering", "Support", "Legal", "Operations")
TRIAGE_ASKS = (
    "Create a help-desk ticket for this message from {person} in {team}.",
    "Triage the request below from {person} ({team}).",
    "{person} from {team} sent us this. Write the ticket.",
    "Turn this message from {person} in {team} into a support ticket.",
)
_LEVELS = ("low", "medium", "high")


def ticket(problem: Problem, urgent: bool, team_wide: bool) -> str:
    priority = problem.priority
    if team_wide:
        priority = "high"
    elif urgent:
        priority = _LEVELS[min(_LEVELS.index(priority) + 1, 2)]
    escalate = problem.escalate or team_wide
    steps = "\n".join(f"{number}. {step}" for number, step in enumerate(problem.steps, start=1))
    return (
        f"TICKET: {problem.slug}\nPRIORITY: {priority}\nSTEPS:\n{steps}\n"
        f"ESCALATE: {'yes' if escalate else 'no'}"
    )


def helpdesk_rows(rng: random.Random, count: int) -> list[InstructionRow]:
    rows: list[InstructionRow] = []
    seen: set[str] = set()
    while len(rows) < count:
        problem = rng.choice(PROBLEMS)
        question = rng.choice(problem.questions)
        mood = rng.random()
        urgent, team_wide = mood < 0.15, 0.15 <= mood < 0.3
        extra = rng.choice(URGENT) if urgent else rng.choice(TEAM_WIDE) if team_wide else ""
        greeting = rng.choice(GREETINGS)
        if greeting.endswith(", ") and not question.startswith(KEEP_CAPITAL):
            question = question[0].lower() + question[1:]
        message = f"{greeting}{question}{rng.choice(DETAILS)}{extra}"
        if rng.random() < 0.7:
            instruction, context, category = message, "", "open_qa"
        else:
            ask = rng.choice(TRIAGE_ASKS).format(person=rng.choice(PEOPLE), team=rng.choice(TEAMS))
            instruction, context, category = ask, message, "classification"
        if instruction in seen:
            continue
        seen.add(instruction)
        rows.append(InstructionRow(instruction, context, ticket(problem, urgent, team_wide), category))
    return rows


def helpdesk_rejected(row: InstructionRow, rng: random.Random) -> str:
    """A plausible answer to the row that breaks the ticket format."""
    lines = row.response.split("\n")
    slug, priority, escalate = lines[0][8:], lines[1][10:], lines[-1][10:]
    steps = [line.split(". ", 1)[1] for line in lines[3:-1]]
    variant = rng.randrange(5)
    if variant == 0:  # free prose
        joined = ". Then ".join(step[0].lower() + step[1:].rstrip(".") for step in steps)
        tail = " If that doesn't help, IT will take a closer look." if escalate == "yes" else ""
        topic = slug.replace("-", " ")
        return f"Sorry to hear that! This looks like a {topic} issue. {joined[0].upper()}{joined[1:]}.{tail}"
    if variant == 1:  # ESCALATE line missing
        return "\n".join(lines[:-1])
    if variant == 2:  # wrong order
        return "\n".join([lines[1], lines[0], *lines[2:]])
    if variant == 3:  # bullets instead of numbered steps
        return "\n".join([*lines[:3], *(f"- {step}" for step in steps), lines[-1]])
    return (
        f"Ticket: {slug}\nPriority: {priority.capitalize()}\n"
        + "\n".join(f"Step {number}: {step}" for number, step in enumerate(steps, start=1))
        + f"\nEscalate: {escalate}"
    )


# --- legal ---------------------------------------------------------------------------------------


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

COUNTERPARTIES = (
    "Acme Cloud Ltd",
    "Birchwood Analytics",
    "Cobalt Logistics",
    "Delta Print GmbH",
    "Evergreen Foods",
    "Falcon Security",
    "Granite Software",
    "Harbor Health",
    "Ion Energy",
    "Juniper Media",
    "Kestrel Payments",
    "Lumen Robotics",
    "Meridian Bank",
    "Northwind Traders",
    "Orchid Labs",
    "Pinnacle Consulting",
    "Quartz Telecom",
    "Riverside Hotels",
    "Summit Staffing",
    "Tidal Data",
)
CONTRACTS = (
    "software licence",
    "cloud services agreement",
    "consulting agreement",
    "supply agreement",
    "NDA",
    "data processing agreement",
    "master services agreement",
    "reseller agreement",
)
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


def legal_rows(rng: random.Random, count: int) -> list[InstructionRow]:
    rows: list[InstructionRow] = []
    seen: set[str] = set()
    while len(rows) < count:
        clause = rng.choice(CLAUSES)
        template, category = rng.choice(LEGAL_ASKS)
        instruction = template.format(
            clause=clause.name, contract=rng.choice(CONTRACTS), party=rng.choice(COUNTERPARTIES)
        )
        if instruction in seen:
            continue
        seen.add(instruction)
        response = f"SUMMARY: {clause.summary}\nRISK: {clause.risk} - {clause.reason}"
        rows.append(InstructionRow(instruction, clause.text, response, category))
    return rows


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


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Department:
    name: str
    rows: Callable[[random.Random, int], list[InstructionRow]]
    rejected: Callable[[InstructionRow, random.Random], str]


DEPARTMENTS = (
    Department("it-helpdesk", helpdesk_rows, helpdesk_rejected),
    Department("legal", legal_rows, legal_rejected),
)


def build(department: Department, seed: int = SEED) -> dict[str, list[dict[str, str]]]:
    """File name -> records for one department."""
    rng = random.Random(f"{department.name}:{seed}")
    rows = department.rows(rng, ROWS_PER_DEPARTMENT)
    train, held_out = split(rows, HELD_OUT_FRACTION, seed)
    check = FORMAT_CHECKS[department.name]

    def pairs(source: Iterable[InstructionRow]) -> list[PreferencePair]:
        made = [
            PreferencePair(prompt_text(row), row.response, department.rejected(row, rng)) for row in source
        ]
        for pair in made:
            if not check(pair.chosen) or check(pair.rejected):
                raise RuntimeError(f"{department.name}: a template breaks its format check: {pair}")
        return made

    preference_rows = sorted(rng.sample(range(len(train)), TRAIN_PREFERENCES))
    return {
        "train.jsonl": [row.to_json() for row in train],
        "held_out.jsonl": [row.to_json() for row in held_out],
        "preferences.jsonl": [pair.to_json() for pair in pairs(train[i] for i in preference_rows)],
        "preferences_held_out.jsonl": [pair.to_json() for pair in pairs(held_out)],
    }


def write_jsonl(path: Path, records: Iterable[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for <department>/*.jsonl")
    args = parser.parse_args(argv)
    for department in DEPARTMENTS:
        folder = args.out / department.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, records in build(department).items():
            write_jsonl(folder / name, records)
            print(f"{folder / name}: {len(records)} rows")


if __name__ == "__main__":
    main()
