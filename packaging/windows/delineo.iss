; Inno Setup script: a per-user Delineo installer (no admin rights), built by
; .github/workflows/release.yml from dist\Delineo\ after packaging/build-app:
;   iscc /DAppVersion=0.1.0 packaging\windows\delineo.iss
; Start menu entry, optional desktop shortcut, slide file types for this user only (HKCU),
; and an uninstaller that removes all of it (settings and the log stay in the user's folders).

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif

[Setup]
AppId={{6C1F3E2A-8B7D-4F2E-9A51-3D0C7B9E4A10}
AppName=Delineo
AppVersion={#AppVersion}
AppPublisher=Delineo
AppComments=Whole-slide viewer that delineates tumour on this computer
PrivilegesRequired=lowest
DefaultDirName={autopf}\Delineo
DefaultGroupName=Delineo
DisableProgramGroupPage=yes
DisableDirPage=auto
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
ChangesAssociations=yes
SetupIconFile=delineo.ico
UninstallDisplayIcon={app}\delineo-gui.exe
UninstallDisplayName=Delineo {#AppVersion}
OutputDir=..\..\dist
OutputBaseFilename=Delineo-{#AppVersion}-windows-x64-setup
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "Create a desktop shortcut"; Flags: unchecked

[Files]
Source: "..\..\dist\Delineo\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\Delineo"; Filename: "{app}\delineo-gui.exe"; Comment: "Whole-slide viewer"
Name: "{autoprograms}\Delineo self-test"; Filename: "{cmd}"; Parameters: "/k ""{app}\delineo.exe"" self-test"
Name: "{autodesktop}\Delineo"; Filename: "{app}\delineo-gui.exe"; Tasks: desktopicon

[Registry]
; One ProgID for every slide type; HKA is HKCU for a per-user install.
Root: HKA; Subkey: "Software\Classes\Delineo.Slide"; ValueType: string; ValueData: "Whole-slide image"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\Delineo.Slide\DefaultIcon"; ValueType: string; ValueData: "{app}\delineo-gui.exe,0"
Root: HKA; Subkey: "Software\Classes\Delineo.Slide\shell\open\command"; ValueType: string; ValueData: """{app}\delineo-gui.exe"" ""%1"""
Root: HKA; Subkey: "Software\Classes\Applications\delineo-gui.exe\shell\open\command"; ValueType: string; ValueData: """{app}\delineo-gui.exe"" ""%1"""; Flags: uninsdeletekey
; Formats only slide viewers open: Delineo becomes their default (for this user).
Root: HKA; Subkey: "Software\Classes\.svs"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.ndpi"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.mrxs"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.scn"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.bif"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.vms"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.vmu"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.svslide"; ValueType: string; ValueData: "Delineo.Slide"; Flags: uninsdeletevalue
; Generic formats other programs own: offered in "Open with", never taken over.
Root: HKA; Subkey: "Software\Classes\.tif\OpenWithProgids"; ValueType: string; ValueName: "Delineo.Slide"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.tiff\OpenWithProgids"; ValueType: string; ValueName: "Delineo.Slide"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.dcm\OpenWithProgids"; ValueType: string; ValueName: "Delineo.Slide"; ValueData: ""; Flags: uninsdeletevalue

[Run]
Filename: "{app}\delineo-gui.exe"; Description: "Open Delineo on the sample slide"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Files the app may have written beside itself (nothing else of the user's is touched).
Type: filesandordirs; Name: "{app}"
